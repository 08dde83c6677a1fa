package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

const (
	timeout  = 30 * time.Second
	interval = 100 * time.Millisecond
)

// TestManagerServesProbesAndMetrics runs the manager as main does, against a
// real API server: it becomes ready, reconciles, and exports keygate's metrics.
func TestManagerServesProbesAndMetrics(t *testing.T) {
	g := NewWithT(t)
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest (KUBEBUILDER_ASSETS=bin/k8s): %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })

	kubeconfig := writeKubeconfig(t, cfg)

	scheme := runtime.NewScheme()
	g.Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	g.Expect(admissionregistrationv1.AddToScheme(scheme)).To(Succeed())
	g.Expect(keygatev1.AddToScheme(scheme)).To(Succeed())
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	// What the kustomize install provides for the injection webhook: the
	// manager's namespace and the webhook configuration whose caBundle the
	// manager keeps in sync (readiness waits for it).
	g.Expect(c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "keygate-system"}})).To(Succeed())
	g.Expect(c.Create(context.Background(), webhookConfiguration(t))).To(Succeed())

	metricsAddr, probeAddr, webhookAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	webhookHost, webhookPort, err := net.SplitHostPort(webhookAddr)
	g.Expect(err).NotTo(HaveOccurred())
	args := []string{"--kubeconfig=" + kubeconfig, "--metrics-bind-address=" + metricsAddr,
		"--health-probe-bind-address=" + probeAddr, "--leader-elect", "--leader-election-namespace=default",
		"--watch-namespaces=default", "--webhook-service-namespace=keygate-system",
		"--webhook-host=" + webhookHost, "--webhook-port=" + webhookPort, "--webhook-cert-dir=" + t.TempDir()}
	ctx := startManager(t, args)
	started := time.Now()
	g.Eventually(func() int { return status("http://" + probeAddr + "/readyz") }, timeout, interval).Should(Equal(http.StatusOK))
	t.Logf("manager ready %v after start (envtest)", time.Since(started).Round(time.Millisecond))
	g.Expect(status("http://" + probeAddr + "/healthz")).To(Equal(http.StatusOK))

	g.Expect(c.Create(ctx, &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p"},
		Spec: keygatev1.TokenPolicySpec{Issuer: "https://x.example.com", Audience: "x"}})).To(Succeed())
	g.Expect(c.Create(ctx, &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "k"},
		Spec: keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: "p"}}})).To(Succeed())
	g.Eventually(func() error {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "keygate-p"}, &corev1.Secret{})
	}, timeout, interval).Should(Succeed(), "the manager reconciles")

	g.Eventually(func() string { return body("http://" + metricsAddr + "/metrics") }, timeout, interval).Should(And(
		ContainSubstring(`keygate_apikeys{condition="Ready",reason="Ready",status="True"} 1`),
		ContainSubstring(`keygate_rotations_total{trigger="manual"} 0`),
		ContainSubstring(`controller_runtime_reconcile_total{controller="apikey"`),
	))
}

// webhookConfiguration reads the MutatingWebhookConfiguration of config/webhook.
func webhookConfiguration(t *testing.T) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "config", "webhook", "mutating-webhook.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := yaml.Unmarshal(data, wh); err != nil {
		t.Fatalf("decode webhook configuration: %v", err)
	}
	return wh
}

// TestManagerRunsWithoutInjection runs the manager binary as one would
// outside a cluster: only a kubeconfig, no keygate-system namespace, no
// webhook configuration. With --enable-injection=false it becomes ready and
// reconciles. (A separate process: controller names are process-global.)
func TestManagerRunsWithoutInjection(t *testing.T) {
	g := NewWithT(t)
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest (KUBEBUILDER_ASSETS=bin/k8s): %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })

	bin := filepath.Join(t.TempDir(), "manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build manager: %v\n%s", err, out)
	}
	probeAddr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--kubeconfig="+writeKubeconfig(t, cfg), "--metrics-bind-address=0",
		"--health-probe-bind-address="+probeAddr, "--enable-injection=false")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	g.Expect(cmd.Start()).To(Succeed())
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	g.Eventually(func() int { return status("http://" + probeAddr + "/readyz") }, timeout, interval).Should(Equal(http.StatusOK))

	scheme := runtime.NewScheme()
	g.Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	g.Expect(keygatev1.AddToScheme(scheme)).To(Succeed())
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Create(ctx, &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p"},
		Spec: keygatev1.TokenPolicySpec{Issuer: "https://x.example.com", Audience: "x"}})).To(Succeed())
	g.Eventually(func() error {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "keygate-p"}, &corev1.Secret{})
	}, timeout, interval).Should(Succeed(), "the manager reconciles")
}

// startManager runs run(args) in the background until the test ends.
func startManager(t *testing.T, args []string) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return ctx
}

// writeKubeconfig writes a kubeconfig for the envtest API server.
func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

func status(url string) int {
	resp, err := http.Get(url) //nolint:gosec,noctx // test loopback URL
	if err != nil {
		return 0
	}
	defer func() { _ = resp.Body.Close() }()
	return resp.StatusCode
}

func body(url string) string {
	resp, err := http.Get(url) //nolint:gosec,noctx // test loopback URL
	if err != nil {
		return fmt.Sprint(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}
