package local

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

const (
	// demoImage is the demo workload's image (cmd/demo-upstream, built with hack/image).
	demoImage = "keygate/demo-upstream:v0.1.0"
	// demoPort is the demo workload's port in the pod, the sidecar's upstream.
	demoPort = 8080
)

// podName is the demo pod (and service account) of a policy's workload.
func podName(policy string) string { return "demo-" + policy }

// serviceAccountUser is the user name the API server gives a service account;
// RBAC bindings to the ServiceAccount apply to it.
func serviceAccountUser(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// demoPod is a pod of the demo workload that asks for a sidecar enforcing policy.
func demoPod(namespace, policy string) *corev1.Pod {
	nonRoot := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   namespace,
			Name:        podName(policy),
			Labels:      map[string]string{keygatev1.LabelInject: "true", "app.kubernetes.io/name": "demo-upstream"},
			Annotations: map[string]string{keygatev1.AnnotationPolicy: policy, keygatev1.AnnotationUpstreamPort: strconv.Itoa(demoPort)},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: podName(policy),
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           demoImage,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Args:            []string{"--listen=127.0.0.1:" + strconv.Itoa(demoPort)},
				Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: demoPort}},
				SecurityContext: &corev1.SecurityContext{RunAsNonRoot: &nonRoot},
			}},
		},
	}
}

// waitWebhook waits until the API server reaches the injection webhook: a
// dry-run labelled pod naming a policy that does not exist comes back refused
// by the webhook (not with "failed calling webhook").
func waitWebhook(ctx context.Context, c client.Client, namespace string, timeout time.Duration) error {
	probe := demoPod(namespace, "keygate-local-probe")
	probe.Spec.ServiceAccountName = ""
	var last error
	err := poll(ctx, timeout, func() bool {
		last = c.Create(ctx, probe.DeepCopy(), client.DryRunAll)
		return last == nil || strings.Contains(last.Error(), "denied the request")
	})
	if err != nil {
		return fmt.Errorf("the API server cannot reach the webhook: %w", errors.Join(err, last))
	}
	return nil
}

// createPods creates, for each policy, a service account and a labelled pod
// using it, and returns the pods as admitted (injected by the webhook).
func createPods(ctx context.Context, c client.Client, namespace string, policies []string) ([]*corev1.Pod, error) {
	var pods []*corev1.Pod
	for _, p := range policies {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: podName(p)}}
		if err := c.Create(ctx, sa); err != nil {
			return nil, fmt.Errorf("create ServiceAccount %s: %w", sa.Name, err)
		}
		pod := demoPod(namespace, p)
		if err := c.Create(ctx, pod); err != nil {
			return nil, fmt.Errorf("create Pod %s: %w", pod.Name, err)
		}
		pods = append(pods, pod)
	}
	return pods, nil
}

// describeInjection says what the webhook added to pod (in full, or only
// the sidecar's arguments), or that it added nothing.
func describeInjection(pod *corev1.Pod, full bool) string {
	var b strings.Builder
	version, injected := pod.Annotations[keygatev1.AnnotationInjected]
	if !injected || len(pod.Spec.InitContainers) == 0 {
		fmt.Fprintf(&b, "  pod %s: NOT injected\n", pod.Name)
		return b.String()
	}
	sc := pod.Spec.InitContainers[0]
	always := sc.RestartPolicy != nil && *sc.RestartPolicy == corev1.ContainerRestartPolicyAlways
	fmt.Fprintf(&b, "  pod %s (policy %s): annotation %s=%s\n", pod.Name, pod.Annotations[keygatev1.AnnotationPolicy], keygatev1.AnnotationInjected, version)
	if !full {
		fmt.Fprintf(&b, "    + init container %q, args %s\n", sc.Name, strings.Join(sc.Args, " "))
		return b.String()
	}
	fmt.Fprintf(&b, "    + init container %q, native sidecar (restartPolicy Always): %v\n", sc.Name, always)
	fmt.Fprintf(&b, "      image %s (pull %s)\n", sc.Image, sc.ImagePullPolicy)
	fmt.Fprintf(&b, "      args %s\n", strings.Join(sc.Args, " "))
	var ports []string
	for _, p := range sc.Ports {
		ports = append(ports, fmt.Sprintf("%s:%d", p.Name, p.ContainerPort))
	}
	fmt.Fprintf(&b, "      ports %s", strings.Join(ports, " "))
	if sc.ReadinessProbe != nil && sc.ReadinessProbe.HTTPGet != nil {
		fmt.Fprintf(&b, ", readiness GET %s on %s", sc.ReadinessProbe.HTTPGet.Path, sc.ReadinessProbe.HTTPGet.Port.String())
	}
	b.WriteString("\n")
	if s := sc.SecurityContext; s != nil && s.RunAsNonRoot != nil && s.ReadOnlyRootFilesystem != nil {
		fmt.Fprintf(&b, "      runAsNonRoot %v, readOnlyRootFilesystem %v\n", *s.RunAsNonRoot, *s.ReadOnlyRootFilesystem)
	}
	return b.String()
}

// waitAccess waits until user (cfg) may read the policy's bundle Secret and
// patch its revocations ConfigMap — the Role the operator grants the service
// accounts of the policy's injected pods.
func waitAccess(ctx context.Context, cfg *rest.Config, namespace, policy string, timeout time.Duration) error {
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return err
	}
	checks := []authorizationv1.ResourceAttributes{
		{Namespace: namespace, Verb: "watch", Resource: "secrets", Name: bundle.SecretName(policy)},
		{Namespace: namespace, Verb: "patch", Resource: "configmaps", Name: bundle.RevocationsConfigMapName(policy)},
	}
	return poll(ctx, timeout, func() bool {
		for i := range checks {
			r := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &checks[i]}}
			if err := c.Create(ctx, r); err != nil || !r.Status.Allowed {
				return false
			}
		}
		return true
	})
}

// deniedOtherSecrets checks that user (cfg) may not read the credentials
// Secret of an ApiKey: least privilege, shown rather than claimed.
func deniedOtherSecrets(ctx context.Context, cfg *rest.Config, namespace, secretName string) (bool, error) {
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return false, err
	}
	r := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
		Namespace: namespace, Verb: "get", Resource: "secrets", Name: secretName,
	}}}
	if err := c.Create(ctx, r); err != nil {
		return false, err
	}
	return !r.Status.Allowed, nil
}
