package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// outage is how long the API server is down: long enough for client-go's
// watch back-off to grow past half a minute (issue 18: the manager then took
// 51-66 s to act on a rotation requested right after the return).
const outage = 25 * time.Second

// actBound is how long the rotation may take after the API server is back.
// It is not a speed budget (the time is printed); it is far below what the
// unbounded back-off took, so the test fails without the fix.
const actBound = 30 * time.Second

// TestManagerActsSoonAfterAnAPIOutage stops the kube-apiserver (etcd keeps
// running) under a manager process, starts it again, and requests a rotation
// at once: the new secret must be written within seconds, and the manager
// must have said, in its log and metrics, that it was waiting on the API
// server.
func TestManagerActsSoonAfterAnAPIOutage(t *testing.T) {
	g := NewWithT(t)
	env := &envtest.Environment{ControlPlaneStopTimeout: 3 * time.Second}
	// A fixed certificate directory keeps the serving certificate (and so
	// the kubeconfig) valid across the restart.
	certDir := t.TempDir()
	env.ControlPlane.GetAPIServer().CertDir = certDir
	cfg, c := startAPIServer(t, env)

	m := startManagerProcess(t, "--kubeconfig="+writeKubeconfig(t, cfg), "--metrics-bind-address=127.0.0.1:0",
		"--health-probe-bind-address=127.0.0.1:0", "--enable-injection=false")
	_, metricsAddr, err := m.addrs(t)
	g.Expect(err).NotTo(HaveOccurred(), "manager log:\n%s", m.log())
	metric := func() string { return body("http://" + metricsAddr + "/metrics") }

	ctx := context.Background()
	g.Expect(c.Create(ctx, &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p"},
		Spec: keygatev1.TokenPolicySpec{Issuer: "https://x.example.com", Audience: "x"}})).To(Succeed())
	g.Expect(c.Create(ctx, &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "k"},
		Spec: keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: "p"}}})).To(Succeed())
	secretOf := func(g Gomega) string {
		s := &corev1.Secret{}
		g.Expect(c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "k-credentials"}, s)).To(Succeed())
		return string(s.Data["secret"])
	}
	var before string
	g.Eventually(func(g Gomega) { before = secretOf(g); g.Expect(before).NotTo(BeEmpty()) }, timeout, interval).Should(Succeed())
	g.Expect(metric()).To(ContainSubstring("keygate_apiserver_reachable 1"))

	apiServer := env.ControlPlane.GetAPIServer()
	down := time.Now()
	if err := apiServer.Stop(); err != nil && !strings.Contains(err.Error(), "timeout waiting") {
		t.Fatal(err)
	}
	// Checked after the rotation, so that a manager without the probe still
	// shows how long it takes to act.
	sawWaiting := false
	for time.Since(down) < outage-time.Second && !sawWaiting {
		sawWaiting = strings.Contains(metric(), "keygate_apiserver_reachable 0")
		time.Sleep(interval)
	}
	// The outage's length is the scenario, not a synchronisation.
	time.Sleep(time.Until(down.Add(outage)))
	g.Expect(apiServer.Start()).To(Succeed())
	back := time.Now()
	g.Eventually(func() error {
		return c.Patch(ctx, &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "k"}},
			client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"keygate.dev/rotate":"after-outage"}}}`)))
	}, timeout, interval).Should(Succeed())
	requested := time.Now()
	g.Eventually(func(g Gomega) string { return secretOf(g) }, actBound, interval).ShouldNot(Equal(before),
		"the rotation requested after the outage is done (manager log:\n%s)", m.log())
	acted := time.Since(requested)
	fmt.Printf("API outage: %s down; rotation requested %s after the return, new secret written %s later\n",
		outage, requested.Sub(back).Round(time.Millisecond), acted.Round(time.Millisecond))

	g.Expect(sawWaiting).To(BeTrue(), "keygate_apiserver_reachable 0 during the outage")
	g.Eventually(metric, timeout, interval).Should(And(ContainSubstring("keygate_apiserver_reachable 1"),
		ContainSubstring("keygate_apiserver_outages_total 1")))
	g.Expect(m.log()).To(And(ContainSubstring("Lost contact with the API server"), ContainSubstring("Regained contact with the API server")))
	g.Expect(status("http://" + metricsAddr + "/metrics")).To(Equal(http.StatusOK))
}
