//go:build e2enode

package node

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// command runs bin with args against the node and returns its combined output.
func command(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...) // #nosec G204 -- the test's own tools
	cmd.Dir = suite.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+suite.kubeconfig,
		"HELM_CACHE_HOME="+filepath.Join(suite.helmHome, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(suite.helmHome, "config"),
		"HELM_DATA_HOME="+filepath.Join(suite.helmHome, "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := command(t.Context(), suite.kubectl, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := command(t.Context(), suite.helm, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// create creates obj. Objects stay: the later steps build on them, and the
// node goes away with everything on it.
func create(t *testing.T, obj client.Object) {
	t.Helper()
	NewWithT(t).Expect(suite.k8s.Create(t.Context(), obj)).To(Succeed(), "create %T %s", obj, obj.GetName())
}

// managerPods lists the manager's pods that are not being deleted.
func managerPods(g Gomega) []corev1.Pod {
	pods := &corev1.PodList{}
	g.Expect(suite.k8s.List(context.Background(), pods, client.InNamespace(systemNamespace),
		client.MatchingLabels{"app.kubernetes.io/name": "keygate"})).To(Succeed())
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

// waitDeployment waits until the Deployment has replicas pods, all updated and Ready.
func waitDeployment(t *testing.T, ns, name string, replicas int32) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		d := &appsv1.Deployment{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, d)).To(Succeed())
		g.Expect(d.Status.ObservedGeneration).To(Equal(d.Generation))
		g.Expect(d.Status.ReadyReplicas).To(Equal(replicas), "ready")
		g.Expect(d.Status.UpdatedReplicas).To(Equal(replicas), "updated")
		g.Expect(d.Status.Replicas).To(Equal(replicas), "total (no old pods left)")
	}, timeout, interval).Should(Succeed(), "Deployment %s/%s with %d Ready replicas", ns, name, replicas)
}

// waitManagers waits for the manager Deployment to settle and for its old
// pods to be gone: a terminating pod serves admissions on connections the API
// server keeps open until it exits (preStop sleep), with its old flags.
func waitManagers(t *testing.T) {
	t.Helper()
	waitDeployment(t, systemNamespace, managerName, 2)
	NewWithT(t).Eventually(func(g Gomega) {
		pods := &corev1.PodList{}
		g.Expect(suite.k8s.List(t.Context(), pods, client.InNamespace(systemNamespace))).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(2), "no terminating manager pods left")
		for _, p := range pods.Items {
			g.Expect(podReady(&p)).To(BeTrue(), "%s Ready", p.Name)
		}
	}, timeout, interval).Should(Succeed())
}

// readyPods returns the Ready pods of the app label in the namespace.
func readyPods(g Gomega, ns, app string) []corev1.Pod {
	pods := &corev1.PodList{}
	g.Expect(suite.k8s.List(context.Background(), pods, client.InNamespace(ns), client.MatchingLabels{"app": app})).To(Succeed())
	var ready []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			ready = append(ready, p)
		}
	}
	return ready
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// credentials are what the operator hands an API consumer.
type credentials struct{ key, secret, authorization string }

// createKey creates an ApiKey and returns its credentials once it is Ready.
func createKey(t *testing.T, ns, name string, spec keygatev1.ApiKeySpec) credentials {
	t.Helper()
	create(t, &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec})
	waitKeyReady(t, ns, name)
	return readCredentials(t, ns, name)
}

func waitKeyReady(t *testing.T, ns, name string) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		key := &keygatev1.ApiKey{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, key)).To(Succeed())
		c := meta.FindStatusCondition(key.Status.Conditions, keygatev1.ConditionReady)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.ObservedGeneration).To(Equal(key.Generation))
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "Ready: %s", c.Message)
	}, timeout, interval).Should(Succeed(), "ApiKey %s/%s Ready", ns, name)
}

// readCredentials waits for and reads an ApiKey's credentials Secret
// (spec.secretName or <name>-credentials).
func readCredentials(t *testing.T, ns, name string) credentials {
	t.Helper()
	key := &keygatev1.ApiKey{}
	NewWithT(t).Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, key)).To(Succeed())
	secretName := key.Spec.SecretName
	if secretName == "" {
		secretName = name + "-credentials"
	}
	var creds credentials
	NewWithT(t).Eventually(func(g Gomega) {
		s := &corev1.Secret{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: secretName}, s)).To(Succeed())
		creds = credentials{key: string(s.Data["key"]), secret: string(s.Data["secret"]), authorization: string(s.Data["authorization"])}
		g.Expect(creds.key).To(HavePrefix("apk-"))
		g.Expect(creds.secret).NotTo(BeEmpty())
	}, timeout, interval).Should(Succeed(), "credentials Secret %s/%s", ns, secretName)
	return creds
}

// restricted is a container security context Pod Security "restricted" accepts.
func restricted() *corev1.SecurityContext {
	no, yes := false, true
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: &no,
		RunAsNonRoot:             &yes,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// demoPodSpec runs the demo upstream on 127.0.0.1:8080, reachable only
// through the sidecar beside it.
func demoPodSpec(serviceAccount string) corev1.PodSpec {
	grace := int64(2)
	return corev1.PodSpec{
		ServiceAccountName:            serviceAccount,
		TerminationGracePeriodSeconds: &grace,
		Containers: []corev1.Container{{
			Name:            "app",
			Image:           demoImage,
			ImagePullPolicy: corev1.PullIfNotPresent,
			Args:            []string{"--listen=127.0.0.1:8080", "--drain-timeout=1s"},
			Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			SecurityContext: restricted(),
		}},
	}
}

// demoPod is a bare pod of the demo upstream; inject labels it for keygate.
func demoPod(ns, name, policy string, inject bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec:       demoPodSpec("default"),
	}
	if inject {
		p.Labels[keygatev1.LabelInject] = "true"
		p.Annotations = map[string]string{keygatev1.AnnotationPolicy: policy, keygatev1.AnnotationUpstreamPort: "http"}
	}
	return p
}
