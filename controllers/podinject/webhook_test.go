package podinject

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"testing"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers/sidecaraccess"
)

func TestWebhookInjectsLabelledPod(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	pod := podIn(ns, "web", withInitContainer("migrate"))
	app := *pod.Spec.Containers[0].DeepCopy()
	g.Expect(k8sClient.Create(ctx, pod)).To(Succeed())

	got := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), got)).To(Succeed())
	g.Expect(got.Spec.InitContainers).To(HaveLen(2))
	want := wantSidecar("8080", "8443", testConfig().Resources)
	if !equality.Semantic.DeepEqual(got.Spec.InitContainers[0], want) {
		t.Errorf("sidecar as stored:\n got %#v\nwant %#v", got.Spec.InitContainers[0], want)
	}
	g.Expect(got.Spec.InitContainers[1].Name).To(Equal("migrate"))
	g.Expect(got.Annotations).To(HaveKeyWithValue(keygatev1.AnnotationInjected, DefaultVersion))
	// The app container, its port and its probe are as submitted (plus API defaults).
	g.Expect(got.Spec.Containers).To(HaveLen(1))
	g.Expect(got.Spec.Containers[0].Ports).To(Equal(app.Ports))
	g.Expect(got.Spec.Containers[0].ReadinessProbe.HTTPGet.Port.StrVal).To(Equal("http"))
	g.Expect(got.Spec.Containers[0].ReadinessProbe.HTTPGet.Path).To(Equal("/ready"))
	g.Expect(admissions.results(ns, "web")).To(Equal([]string{resultInjected}))
}

func TestWebhookNeverSeesOtherPods(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(ctx)
	tests := []struct {
		name string
		pod  *corev1.Pod
	}{
		{"unlabelled pod", podIn(ns, "plain", func(p *corev1.Pod) { p.Labels = nil })},
		{"label not true", podIn(ns, "off", func(p *corev1.Pod) { p.Labels[keygatev1.LabelInject] = "false" })},
		{"kube-system", podIn("kube-system", "sys")},
		{"kube-public", podIn("kube-public", "pub")},
		{"the operator's namespace", podIn(operatorNamespace, "op")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			submitted := tt.pod.DeepCopy()
			g.Expect(k8sClient.Create(ctx, tt.pod)).To(Succeed())
			got := &corev1.Pod{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(tt.pod), got)).To(Succeed())
			g.Expect(got.Spec.InitContainers).To(BeEmpty())
			g.Expect(got.Annotations).To(Equal(submitted.Annotations))
			g.Expect(admissions.results(tt.pod.Namespace, tt.pod.Name)).To(BeEmpty(), "the webhook was called")
		})
	}
}

func TestWebhookReadmissionIsIdempotent(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	first := podIn(ns, "first")
	g.Expect(k8sClient.Create(ctx, first)).To(Succeed())
	stored := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(first), stored)).To(Succeed())

	// The stored (injected, defaulted) pod submitted again, as `kubectl get -o yaml | kubectl create` would.
	again := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: "again", Namespace: ns, Labels: stored.Labels, Annotations: stored.Annotations,
	}, Spec: *stored.Spec.DeepCopy()}
	g.Expect(k8sClient.Create(ctx, again)).To(Succeed())
	got := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(again), got)).To(Succeed())
	g.Expect(equality.Semantic.DeepEqual(got.Spec, stored.Spec)).To(BeTrue(), "spec changed:\n%#v\n%#v", got.Spec, stored.Spec)
	g.Expect(got.Annotations).To(Equal(stored.Annotations))
	g.Expect(admissions.results(ns, "again")).To(Equal([]string{resultUnchanged}))
}

func TestWebhookRefuses(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(ctx)
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"missing policy", podIn(ns, "p1", withoutAnnotation(keygatev1.AnnotationPolicy)), "annotation keygate.dev/policy is required"},
		{"bad policy name", podIn(ns, "p2", withAnnotation(keygatev1.AnnotationPolicy, "Pay_ments")), `annotation keygate.dev/policy: "Pay_ments" is not a valid TokenPolicy name`},
		{"policy does not exist", podIn(ns, "p3", withAnnotation(keygatev1.AnnotationPolicy, "billing")), fmt.Sprintf(`TokenPolicy "billing" named by annotation keygate.dev/policy does not exist in namespace %q`, ns)},
		{"missing upstream", podIn(ns, "p4", withoutAnnotation(keygatev1.AnnotationUpstreamPort)), "annotation keygate.dev/upstream-port is required"},
		{"upstream out of range", podIn(ns, "p5", withAnnotation(keygatev1.AnnotationUpstreamPort, "70000")), `annotation keygate.dev/upstream-port: "70000" is neither a port number (1-65535) nor a named port of the pod's containers`},
		{"upstream unknown name", podIn(ns, "p6", withAnnotation(keygatev1.AnnotationUpstreamPort, "grpc")), `annotation keygate.dev/upstream-port: "grpc" is neither`},
		{"bad port", podIn(ns, "p7", withAnnotation(keygatev1.AnnotationPort, "x")), `annotation keygate.dev/port: "x" is not a port number (1-65535)`},
		{"port clash", podIn(ns, "p8", withContainerPort("tls", 8443)), `annotation keygate.dev/port: port 8443 is already used by container "app"`},
		{"admin port clash", podIn(ns, "p9", withContainerPort("admin", 9901)), `container "app" uses port 9901, the keygate sidecar's admin port`},
		{"upstream is the sidecar port", podIn(ns, "p10", withAnnotation(keygatev1.AnnotationUpstreamPort, "8443")), "annotation keygate.dev/upstream-port: port 8443 is also the sidecar's port"},
		{"bad resource override", podIn(ns, "p11", withAnnotation(AnnotationMemoryLimit, "much")), `annotation keygate.dev/sidecar-memory-limit: "much" is not a positive quantity`},
		{"bad TLS Secret name", podIn(ns, "p12", withAnnotation(keygatev1.AnnotationTLSSecret, "web/tls")), `annotation keygate.dev/tls-secret: "web/tls" is not a valid Secret name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			err := k8sClient.Create(ctx, tt.pod)
			g.Expect(err).To(HaveOccurred())
			g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "error %v", err)
			g.Expect(err.Error()).To(ContainSubstring(`admission webhook "inject.keygate.dev" denied the request`))
			g.Expect(err.Error()).To(ContainSubstring(tt.want))
			g.Expect(apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(tt.pod), &corev1.Pod{}))).To(BeTrue())
			g.Expect(admissions.results(ns, tt.pod.Name)).To(Equal([]string{resultRefused}))
		})
	}
}

func TestWebhookInjectsJobPod(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	// A pod as the Job controller makes it: restartPolicy Never, job labels, a command that ends.
	pod := podIn(ns, "report-x7k2p", func(p *corev1.Pod) {
		p.Labels["batch.kubernetes.io/job-name"] = "report"
		p.Spec.RestartPolicy = corev1.RestartPolicyNever
		p.Spec.Containers[0].Command = []string{"/bin/report", "--once"}
		p.Spec.Containers[0].ReadinessProbe = nil
	})
	g.Expect(k8sClient.Create(ctx, pod)).To(Succeed())
	got := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), got)).To(Succeed())
	g.Expect(got.Spec.RestartPolicy).To(Equal(corev1.RestartPolicyNever))
	g.Expect(got.Spec.InitContainers).To(HaveLen(1))
	sidecar := got.Spec.InitContainers[0]
	g.Expect(sidecar.Name).To(Equal(ContainerName))
	// Native sidecar: it does not keep the Job's pod from completing.
	g.Expect(sidecar.RestartPolicy).To(HaveValue(Equal(corev1.ContainerRestartPolicyAlways)))
	g.Expect(sidecar.StartupProbe.HTTPGet.Path).To(Equal("/readyz"))
}

func TestSidecarAccess(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	pod := podIn(ns, "web", func(p *corev1.Pod) { p.Spec.ServiceAccountName = "web-sa" })
	g.Expect(k8sClient.Create(ctx, pod)).To(Succeed())
	g.Expect(k8sClient.Create(ctx, podIn(ns, "worker", func(p *corev1.Pod) { p.Spec.ServiceAccountName = "worker-sa" }))).To(Succeed())

	name := types.NamespacedName{Namespace: ns, Name: sidecaraccess.RoleName("payments-api")}
	role, binding := &rbacv1.Role{}, &rbacv1.RoleBinding{}
	g.Eventually(func(g Gomega) {
		g.Expect(k8sClient.Get(ctx, name, role)).To(Succeed())
		g.Expect(k8sClient.Get(ctx, name, binding)).To(Succeed())
		g.Expect(binding.Subjects).To(HaveLen(2))
	}).WithTimeout(timeout).WithPolling(interval).Should(Succeed())

	g.Expect(role.Rules).To(Equal([]rbacv1.PolicyRule{
		{Verbs: []string{"get", "list", "watch"}, APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"keygate-payments-api"}},
		{Verbs: []string{"get", "list", "watch", "patch"}, APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"keygate-payments-api-revocations"}},
		{Verbs: []string{"patch"}, APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"keygate-payments-api-usage"}},
	}))
	g.Expect(binding.Subjects).To(Equal([]rbacv1.Subject{
		{Kind: "ServiceAccount", Name: "web-sa", Namespace: ns},
		{Kind: "ServiceAccount", Name: "worker-sa", Namespace: ns},
	}))
	g.Expect(binding.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name.Name}))
	for _, o := range []client.Object{role, binding} {
		g.Expect(o.GetLabels()).To(HaveKeyWithValue(keygatev1.LabelManagedBy, keygatev1.ManagedByValue))
		g.Expect(o.GetLabels()).To(HaveKeyWithValue(keygatev1.LabelTokenPolicy, "payments-api"))
		g.Expect(o.GetOwnerReferences()).To(HaveLen(1))
		g.Expect(o.GetOwnerReferences()[0].Kind).To(Equal("TokenPolicy"))
		g.Expect(o.GetOwnerReferences()[0].Controller).To(HaveValue(BeTrue()))
	}

	can := func(verb, resource, name string) bool {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:" + ns + ":web-sa",
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: verb, Resource: resource, Name: name,
			},
		}}
		g.Expect(k8sClient.Create(ctx, sar)).To(Succeed())
		return sar.Status.Allowed
	}
	// The API server's RBAC authorizer reads Roles from its own cache, which
	// may not have the version just read yet: the first grant is polled.
	g.Eventually(func() bool { return can("get", "secrets", "keygate-payments-api") }).WithTimeout(timeout).WithPolling(interval).Should(BeTrue(), "get its bundle Secret")
	g.Expect(can("watch", "secrets", "keygate-payments-api")).To(BeTrue(), "watch its bundle Secret")
	g.Expect(can("patch", "configmaps", "keygate-payments-api-revocations")).To(BeTrue(), "patch its revocations")
	g.Expect(can("get", "secrets", "payments-db-credentials")).To(BeFalse(), "get another Secret")
	g.Expect(can("get", "secrets", "keygate-billing")).To(BeFalse(), "get another policy's bundle")
	g.Expect(can("list", "secrets", "")).To(BeFalse(), "list Secrets")
	g.Expect(can("update", "secrets", "keygate-payments-api")).To(BeFalse(), "update its bundle Secret")
	g.Expect(can("patch", "configmaps", "other")).To(BeFalse(), "patch another ConfigMap")

	// A policy sharded by a larger limit: the Role names its shards too, by name.
	policy := &keygatev1.TokenPolicy{}
	g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "payments-api"}, policy)).To(Succeed())
	policy.Spec.MaxApiKeys = 10000
	g.Expect(k8sClient.Update(ctx, policy)).To(Succeed())
	shards := bundle.ShardNames("payments-api", bundle.ShardCount(10000))
	g.Eventually(func(g Gomega) []string {
		g.Expect(k8sClient.Get(ctx, name, role)).To(Succeed())
		return role.Rules[0].ResourceNames
	}).WithTimeout(timeout).WithPolling(interval).Should(ConsistOf(append([]string{"keygate-payments-api"}, shards...)))
	g.Expect(shards).To(HaveLen(8))
	g.Eventually(func() bool { return can("watch", "secrets", shards[7]) }).WithTimeout(timeout).WithPolling(interval).Should(BeTrue(), "watch a shard")
	g.Expect(can("watch", "secrets", bundle.ShardName("billing", 8, 7))).To(BeFalse(), "watch another policy's shard")

	// The last injected pod gone, the access goes too.
	for _, n := range []string{"web", "worker"} {
		g.Expect(k8sClient.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n}}, client.GracePeriodSeconds(0))).To(Succeed())
	}
	g.Eventually(func(g Gomega) {
		g.Expect(apierrors.IsNotFound(k8sClient.Get(ctx, name, &rbacv1.RoleBinding{}))).To(BeTrue())
		g.Expect(apierrors.IsNotFound(k8sClient.Get(ctx, name, &rbacv1.Role{}))).To(BeTrue())
	}).WithTimeout(timeout).WithPolling(interval).Should(Succeed())
}

// TestWebhookCertificateRotation rotates the serving certificate, then the
// CA, while pods are being admitted.
func TestWebhookCertificateRotation(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	secretKey := types.NamespacedName{Namespace: operatorNamespace, Name: DefaultCertSecretName}
	n := 0
	admit := func() error {
		n++
		return k8sClient.Create(ctx, podIn(ns, "rot-"+strconv.Itoa(n)))
	}
	caBundle := func() []byte {
		wh := &admissionregistrationv1.MutatingWebhookConfiguration{}
		g.Expect(k8sClient.Get(ctx, types.NamespacedName{Name: DefaultWebhookConfigName}, wh)).To(Succeed())
		return wh.Webhooks[0].ClientConfig.CABundle
	}
	drop := func(keys ...string) {
		s := &corev1.Secret{}
		g.Expect(k8sClient.Get(ctx, secretKey, s)).To(Succeed())
		for _, k := range keys {
			delete(s.Data, k)
		}
		g.Expect(k8sClient.Update(ctx, s)).To(Succeed())
	}
	g.Expect(admit()).To(Succeed())

	// 1. A new serving certificate from the same CA: no admission may fail.
	servedBefore, caBefore := servedCert(t), caBundle()
	drop("tls.crt", "tls.key")
	rotated := false
	for range int(timeout / interval) {
		g.Expect(admit()).To(Succeed(), "admission during serving certificate rotation")
		if !bytes.Equal(servedCert(t), servedBefore) {
			rotated = true
			break
		}
		sleep()
	}
	g.Expect(rotated).To(BeTrue(), "the served certificate did not change")
	g.Expect(caBundle()).To(Equal(caBefore))
	for range 3 {
		g.Expect(admit()).To(Succeed(), "admission after serving certificate rotation")
	}

	// 2. A new CA: the caBundle follows and admissions go on.
	servedBefore = servedCert(t)
	drop("ca.crt", "ca.key")
	g.Eventually(func(g Gomega) {
		g.Expect(caBundle()).NotTo(Equal(caBefore))
		g.Expect(servedCert(t)).NotTo(Equal(servedBefore))
		g.Expect(admit()).To(Succeed())
	}).WithTimeout(timeout).WithPolling(interval).Should(Succeed())
	for range 3 {
		g.Expect(admit()).To(Succeed(), "admission after CA rotation")
	}
}

// servedCert is the DER certificate the webhook server presents now.
func servedCert(t *testing.T) []byte {
	t.Helper()
	conn, err := tls.Dial("tcp", webhookAddr, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}) //nolint:gosec // only reads the certificate
	if err != nil {
		t.Fatalf("dial webhook: %v", err)
	}
	defer conn.Close() //nolint:errcheck // read-only
	return conn.ConnectionState().PeerCertificates[0].Raw
}
