//go:build e2enode

package node

import (
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers/podinject"
)

// world is what the steps share: they run in order, each on what the
// previous ones built.
var world struct {
	open, dataLake, syndigo credentials
	demo                    []string // http://<pod IP>:<sidecar port> of the demo pods
	service                 string   // http://<ClusterIP> of the demo Service
	syndigoPod              string
}

// TestNode runs issue 9's scenario as ordered steps; a failed step stops the
// run, since the later ones build on it.
func TestNode(t *testing.T) {
	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"install", testInstall},
		{"workload", testWorkload},
		{"flows", testFlows},
		{"rotation", testRotation},
		{"revocation", testRevocation},
		{"readmission", testReadmission},
		{"failover", testFailover},
		{"webhook down", testWebhookDown},
		{"sidecar rbac", testSidecarRBAC},
		{"upgrade", testUpgrade},
		{"uninstall", testUninstall},
		{"kustomize", testKustomize},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.fn) {
			t.Fatalf("step %q failed; the later steps build on it", s.name)
		}
	}
}

// 1. helm install: both managers Ready, the CRDs established, the webhook's caBundle filled.
func testInstall(t *testing.T) {
	g := NewWithT(t)
	start := time.Now()
	helm(t, "install", release, "charts/keygate", "-n", systemNamespace, "--create-namespace", "--wait", "--timeout", "5m")
	figure("helm install --wait", "%s", seconds(time.Since(start)))

	waitDeployment(t, systemNamespace, managerName, 2)
	for _, name := range []string{"apikeys.keygate.dev", "tokenpolicies.keygate.dev"} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Name: name}, crd)).To(Succeed())
		established := false
		for _, c := range crd.Status.Conditions {
			established = established || (c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue)
		}
		g.Expect(established).To(BeTrue(), "CRD %s established", name)
	}
	waitCABundle(t)
	checkQuietStart(t)
}

// 2. The samples, and a Deployment of the demo upstream labelled for
// injection: every pod 2/2 with the sidecar as a native sidecar started
// before the app.
func testWorkload(t *testing.T) {
	g := NewWithT(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
	}}}
	g.Expect(suite.k8s.Create(t.Context(), ns)).To(Succeed())
	for _, f := range []string{"silverflow.yaml", "syndigo.yaml"} {
		kubectl(t, "apply", "-n", namespace, "-f", filepath.Join("config", "samples", f))
	}
	world.open = createKey(t, namespace, "open", keygatev1.ApiKeySpec{
		PolicyRef: keygatev1.PolicyReference{Name: "silverflow"}, Permissions: []keygatev1.Permission{"charges:List"},
	})
	waitKeyReady(t, namespace, "data-lake")
	world.dataLake = readCredentials(t, namespace, "data-lake")
	waitKeyReady(t, namespace, "integration-user")
	world.syndigo = readCredentials(t, namespace, "integration-user")

	for _, sa := range []string{"demo", "syndigo"} {
		g.Expect(suite.k8s.Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: sa}})).To(Succeed())
	}
	start := time.Now()
	g.Expect(suite.k8s.Create(t.Context(), demoDeployment("demo", "silverflow", 2))).To(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(readyPods(g, namespace, "demo")).To(HaveLen(2)) }, timeout, 20*time.Millisecond).Should(Succeed())
	figure("labelled Deployment (2) create -> 2/2 Ready", "%s", seconds(time.Since(start)))
	g.Expect(suite.k8s.Create(t.Context(), demoDeployment("syndigo", "syndigo-sandbox", 1))).To(Succeed())
	g.Expect(suite.k8s.Create(t.Context(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "demo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "demo"}, Ports: []corev1.ServicePort{{
			Name: "http", Port: 80, TargetPort: intstr.FromString(podinject.PortName),
		}}},
	})).To(Succeed())
	waitDeployment(t, namespace, "demo", 2)
	waitDeployment(t, namespace, "syndigo", 1)

	for _, p := range readyPods(g, namespace, "demo") {
		checkNativeSidecar(g, &p)
		world.demo = append(world.demo, fmt.Sprintf("http://%s:%d", p.Status.PodIP, podinject.DefaultPort))
	}
	sp := readyPods(g, namespace, "syndigo")
	g.Expect(sp).To(HaveLen(1))
	checkNativeSidecar(g, &sp[0])
	world.syndigoPod = fmt.Sprintf("http://%s:%d", sp[0].Status.PodIP, podinject.DefaultPort)
	svc := &corev1.Service{}
	g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: "demo"}, svc)).To(Succeed())
	world.service = "http://" + svc.Spec.ClusterIP
}

// checkNativeSidecar: the sidecar is the first init container with
// restartPolicy Always, running and Ready, started no later than the app.
func checkNativeSidecar(g Gomega, p *corev1.Pod) {
	g.Expect(p.Annotations).To(HaveKey(keygatev1.AnnotationInjected))
	g.Expect(p.Spec.InitContainers).NotTo(BeEmpty())
	sc := p.Spec.InitContainers[0]
	g.Expect(sc.Name).To(Equal(podinject.ContainerName))
	g.Expect(sc.RestartPolicy).NotTo(BeNil())
	g.Expect(*sc.RestartPolicy).To(Equal(corev1.ContainerRestartPolicyAlways), "a native sidecar")
	g.Expect(p.Status.InitContainerStatuses).NotTo(BeEmpty())
	s := p.Status.InitContainerStatuses[0]
	g.Expect(s.Name).To(Equal(podinject.ContainerName))
	g.Expect(s.Ready).To(BeTrue(), "sidecar Ready in %s", p.Name)
	g.Expect(s.State.Running).NotTo(BeNil(), "sidecar running in %s", p.Name)
	g.Expect(p.Status.ContainerStatuses).To(HaveLen(1))
	app := p.Status.ContainerStatuses[0]
	g.Expect(app.Ready).To(BeTrue())
	g.Expect(app.State.Running).NotTo(BeNil())
	g.Expect(s.State.Running.StartedAt.Time).NotTo(BeTemporally(">", app.State.Running.StartedAt.Time), "the sidecar starts before the app")
	g.Expect(s.RestartCount).To(BeZero(), "the sidecar never restarted in %s", p.Name)
}

func demoDeployment(name, policy string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	spec := demoPodSpec(name)
	if name == "demo" {
		spec.ServiceAccountName = "demo"
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      map[string]string{"app": name, keygatev1.LabelInject: "true"},
					Annotations: map[string]string{keygatev1.AnnotationPolicy: policy, keygatev1.AnnotationUpstreamPort: "http"},
				},
				Spec: spec,
			},
		},
	}
}

// 3. Every seed flow from the host, through each pod IP and the ClusterIP Service.
func testFlows(t *testing.T) {
	targets := append(append([]string(nil), world.demo...), world.service)
	for _, base := range targets {
		t.Run(base, func(t *testing.T) {
			g := NewWithT(t)
			open := world.open
			var r response
			g.Eventually(func() int { r = get(base, "/charges", open.authorization); return r.status }, timeout, interval).
				Should(Equal(http.StatusOK), "Basic through %s: %s%s", base, r.raw, errString(r.err))
			g.Expect(r.body).To(HaveKeyWithValue("path", "/charges"))
			g.Expect(r.body).To(HaveKeyWithValue("authorizationForwarded", false), "the credential stays at the sidecar")
			g.Expect(identity(r)).To(HaveKeyWithValue("X-Keygate-Key-Id", open.key))
			g.Expect(identity(r)).To(HaveKeyWithValue("X-Keygate-Permissions", "charges:List"))

			tok, tr := token(base, open)
			g.Expect(tr.status).To(Equal(http.StatusCreated), "token endpoint: %s", tr.raw)
			g.Expect(tok).NotTo(BeEmpty())
			r = get(base, "/charges/ch_1", "Bearer "+tok)
			g.Expect(r.status).To(Equal(http.StatusOK), "Bearer: %s", r.raw)
			g.Expect(identity(r)).To(HaveKeyWithValue("X-Keygate-Key-Id", open.key))

			r = get(base, "/charges", basic(open.key, open.secret+"x"))
			g.Expect(r.status).To(Equal(http.StatusUnauthorized), "wrong secret: %s", r.raw)
			g.Expect(r.body).To(HaveKeyWithValue("error", "unauthorized"))

			r = get(base, "/reports", open.authorization)
			g.Expect(r.status).To(Equal(http.StatusForbidden), "missing permission: %s", r.raw)
			g.Expect(r.body).To(HaveKeyWithValue("permission", "reports:All"))
			g.Expect(r.body).To(HaveKeyWithValue("message", "missing permission reports:All"))

			r = get(base, "/charges", world.dataLake.authorization)
			g.Expect(r.status).To(Equal(http.StatusUnauthorized), "data-lake is limited to its allowedCIDRs; the host is not in them: %s", r.raw)
		})
	}
	t.Run("EN scheme", func(t *testing.T) {
		g := NewWithT(t)
		base := world.syndigoPod
		var r response
		g.Eventually(func() int {
			r = call(base, http.MethodPost, "/api/auth", `{"username":"`+world.syndigo.key+`","secret":"`+world.syndigo.secret+`"}`,
				"Content-Type", "application/json")
			return r.status
		}, timeout, interval).Should(Equal(http.StatusCreated), "Syndigo token endpoint: %s", r.raw)
		header, _ := r.body["auth_header"].(string)
		g.Expect(header).To(HavePrefix("EN "))
		r = get(base, "/api/auth/test", header)
		g.Expect(r.status).To(Equal(http.StatusOK), "EN token at the sidecar's test endpoint: %s", r.raw)
		g.Expect(r.body).To(HaveKeyWithValue("keyId", world.syndigo.key))
		r = get(base, "/products", header)
		g.Expect(r.status).To(Equal(http.StatusOK), "EN token through to the app: %s", r.raw)
		g.Expect(identity(r)).To(HaveKeyWithValue("X-Keygate-Key-Id", world.syndigo.key))
	})
}
