package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// errorLine matches an error-level entry of the manager's JSON log, and a
// klog error line in case anything still logs past the shared sink.
var errorLine = regexp.MustCompile(`"level":"error"|^E\d{4} `)

// TestTwoReplicasStartQuietly starts two managers at once, as a Deployment of
// two replicas does on a fresh install (the chart creates the certificate
// Secret and the Lease empty): both become ready with the same webhook
// certificate, one leads, and neither logs an error. The replicas race for
// the certificate Secret and the Lease; those conflicts are expected and
// retried, and used to be logged as errors with stack traces (issue 17).
func TestTwoReplicasStartQuietly(t *testing.T) {
	g := NewWithT(t)
	cfg, c := startAPIServer(t, &envtest.Environment{})
	ctx := context.Background()
	const ns = "keygate-system"
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	g.Expect(c.Create(ctx, webhookConfiguration(t))).To(Succeed())
	g.Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "keygate-webhook-cert"}})).To(Succeed())
	g.Expect(c.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "keygate-manager.keygate.dev"}})).To(Succeed())

	kubeconfig := writeKubeconfig(t, cfg)
	type replica struct {
		m       *managerProcess
		certDir string
	}
	replicas := []*replica{{certDir: t.TempDir()}, {certDir: t.TempDir()}}
	for _, r := range replicas { // both at once: no waiting in between
		r.m = startWithWebhook(t, "--kubeconfig="+kubeconfig, "--metrics-bind-address=0",
			"--health-probe-bind-address=127.0.0.1:0", "--leader-elect", "--leader-election-namespace="+ns,
			"--watch-namespaces=default", "--webhook-service-namespace="+ns, "--webhook-cert-dir="+r.certDir)
	}
	for _, r := range replicas {
		waitReady(t, r.m)
	}

	g.Eventually(func(g Gomega) {
		lease := &coordinationv1.Lease{}
		g.Expect(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "keygate-manager.keygate.dev"}, lease)).To(Succeed())
		g.Expect(lease.Spec.HolderIdentity).NotTo(BeNil())
		g.Expect(*lease.Spec.HolderIdentity).NotTo(BeEmpty())
	}, timeout, interval).Should(Succeed(), "one replica leads")
	g.Eventually(func() string {
		a, _ := os.ReadFile(filepath.Join(replicas[0].certDir, "tls.crt"))
		b, _ := os.ReadFile(filepath.Join(replicas[1].certDir, "tls.crt"))
		if len(a) == 0 || string(a) != string(b) {
			return "the replicas serve different webhook certificates"
		}
		return ""
	}, timeout, interval).Should(BeEmpty())
	secret := &corev1.Secret{}
	g.Expect(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "keygate-webhook-cert"}, secret)).To(Succeed())
	g.Expect(secret.Data).To(HaveKey("ca.crt"))

	for i, r := range replicas {
		log := r.m.log()
		for _, line := range strings.Split(log, "\n") {
			if errorLine.MatchString(line) {
				t.Errorf("replica %d logged an error while starting: %s", i, line)
			}
		}
		g.Expect(log).NotTo(ContainSubstring("missing ca.crt"), "replica %d", i)
	}
}
