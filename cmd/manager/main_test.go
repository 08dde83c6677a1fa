package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/test/logaddr"
)

const (
	timeout  = 30 * time.Second
	interval = 100 * time.Millisecond
)

// TestManagerServesProbesAndMetrics runs the manager as main does, against a
// real API server: it becomes ready, reconciles, and exports keygate's metrics.
func TestManagerServesProbesAndMetrics(t *testing.T) {
	g := NewWithT(t)
	cfg, c := startAPIServer(t, &envtest.Environment{})
	kubeconfig := writeKubeconfig(t, cfg)
	// What the kustomize install provides for the injection webhook: the
	// manager's namespace and the webhook configuration whose caBundle the
	// manager keeps in sync (readiness waits for it).
	g.Expect(c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "keygate-system"}})).To(Succeed())
	g.Expect(c.Create(context.Background(), webhookConfiguration(t))).To(Succeed())

	ctx := context.Background()
	started := time.Now()
	_, probeAddr, metricsAddr := startReadyManager(t, "--kubeconfig="+kubeconfig, "--metrics-bind-address=127.0.0.1:0",
		"--health-probe-bind-address=127.0.0.1:0", "--leader-elect", "--leader-election-namespace=default",
		"--watch-namespaces=default", "--webhook-service-namespace=keygate-system", "--webhook-cert-dir="+t.TempDir())
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

// startReadyManager starts the manager with args plus a webhook on port 0
// and waits until /readyz passes (see waitReady).
func startReadyManager(t *testing.T, args ...string) (m *managerProcess, probeAddr, metricsAddr string) {
	t.Helper()
	m = startWithWebhook(t, args...)
	probeAddr, metricsAddr = waitReady(t, m)
	return m, probeAddr, metricsAddr
}

// startWithWebhook starts the manager with args plus a webhook listening on
// 127.0.0.1 port 0 (the manager binds any free port and logs it).
func startWithWebhook(t *testing.T, args ...string) *managerProcess {
	t.Helper()
	return startManagerProcess(t, append(slices.Clone(args), "--webhook-host=127.0.0.1", "--webhook-port=0")...)
}

// waitReady waits until m's /readyz passes and returns its probe and metrics
// addresses.
func waitReady(t *testing.T, m *managerProcess) (probeAddr, metricsAddr string) {
	t.Helper()
	g := NewWithT(t)
	probeAddr, metricsAddr, err := m.addrs(t)
	if err != nil {
		t.Fatalf("manager addresses: %v\n%s", err, m.log())
	}
	g.Eventually(func() bool { return m.exited() || status("http://"+probeAddr+"/readyz") == http.StatusOK }, timeout, interval).
		Should(BeTrue(), "manager ready or exited")
	if m.exited() {
		t.Fatalf("manager exited:\n%s", m.log())
	}
	return probeAddr, metricsAddr
}

// startAPIServer starts env (keygate's CRDs installed) until the test ends and
// returns its config and a client knowing keygate's types.
func startAPIServer(t *testing.T, env *envtest.Environment) (*rest.Config, client.Client) {
	t.Helper()
	env.CRDDirectoryPaths = []string{filepath.Join("..", "..", "config", "crd", "bases")}
	env.ErrorIfCRDPathMissing = true
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest (KUBEBUILDER_ASSETS=bin/k8s): %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(keygatev1.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, c
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
	cfg, c := startAPIServer(t, &envtest.Environment{})

	m := startManagerProcess(t, "--kubeconfig="+writeKubeconfig(t, cfg), "--metrics-bind-address=0",
		"--health-probe-bind-address=127.0.0.1:0", "--enable-injection=false")
	probeAddr, _, err := m.addrs(t)
	g.Expect(err).NotTo(HaveOccurred(), "manager log:\n%s", m.log())
	g.Eventually(func() int { return status("http://" + probeAddr + "/readyz") }, timeout, interval).Should(Equal(http.StatusOK))
	ctx := context.Background()
	g.Expect(c.Create(ctx, &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p"},
		Spec: keygatev1.TokenPolicySpec{Issuer: "https://x.example.com", Audience: "x"}})).To(Succeed())
	g.Eventually(func() error {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "keygate-p"}, &corev1.Secret{})
	}, timeout, interval).Should(Succeed(), "the manager reconciles")
}

var (
	buildOnce  sync.Once
	managerBin string
	buildErr   error
)

// managerProcess is the manager binary running as a child process, its
// output in a log file.
type managerProcess struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

// startManagerProcess builds the manager once per test binary and runs it
// with args until the test ends.
func startManagerProcess(t *testing.T, args ...string) *managerProcess {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keygate-manager-")
		if err != nil {
			buildErr = err
			return
		}
		managerBin = filepath.Join(dir, "manager")
		if out, err := exec.Command("go", "build", "-o", managerBin, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build manager: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	m := &managerProcess{logPath: filepath.Join(t.TempDir(), "manager.log"), done: make(chan struct{})}
	logFile, err := os.Create(m.logPath)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(managerBin, args...) //nolint:gosec // the binary built above
	m.cmd.Stdout, m.cmd.Stderr = logFile, logFile
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = m.cmd.Wait(); _ = logFile.Close(); close(m.done) }()
	t.Cleanup(m.stop)
	return m
}

func (m *managerProcess) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// addrs waits for the addresses the manager reports having bound; metrics
// is "" when the metrics server is off.
func (m *managerProcess) addrs(t *testing.T) (probe, metrics string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if probe, err = logaddr.Manager(ctx, m.logPath, "health probe", m.exited); err != nil {
		return "", "", err
	}
	if slices.Contains(m.cmd.Args, "--metrics-bind-address=0") {
		return probe, "", nil
	}
	metrics, err = logaddr.Manager(ctx, m.logPath, "metrics", m.exited)
	return probe, metrics, err
}

func (m *managerProcess) log() string {
	b, _ := os.ReadFile(m.logPath)
	return string(b)
}

// stop sends SIGTERM and waits for the exit (SIGKILL after timeout).
func (m *managerProcess) stop() {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(timeout):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
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
