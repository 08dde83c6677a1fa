package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers"
)

const (
	// operatorTimeout bounds a reconcile: object applied → Ready, Secret written.
	operatorTimeout = 30 * time.Second
	// propagationTimeout bounds an API write reaching a running sidecar.
	propagationTimeout = 10 * time.Second
	interval           = 50 * time.Millisecond
)

// suite is what TestMain shares with the tests.
var suite struct {
	cfg        *rest.Config
	k8s        client.Client
	kubeconfig string
	// egress maps the pod addresses the API server proxies to (through the
	// egress CONNECT proxy) to loopback listeners of the test.
	egress *egressProxy
}

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) (code int) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if abs, err := filepath.Abs(filepath.Join("..", "..", "bin", "k8s")); err == nil {
			_ = os.Setenv("KUBEBUILDER_ASSETS", abs)
		}
	}
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "cli suite: "+format+"\n", args...)
		return 1
	}
	dir, err := os.MkdirTemp("", "keygate-cli-")
	if err != nil {
		return fail("temp dir: %v", err)
	}
	defer func() { _ = os.RemoveAll(dir) }()

	// The API server's "cluster" egress (pods/proxy among others) goes
	// through an HTTP CONNECT proxy on a Unix socket: the test maps a pod's
	// address to a loopback listener, and nothing ever dials the pod address.
	egress, err := startEgressProxy(filepath.Join(dir, "egress.sock"))
	if err != nil {
		return fail("egress proxy: %v", err)
	}
	defer egress.close()
	egressConfig := filepath.Join(dir, "egress.yaml")
	if err := os.WriteFile(egressConfig, []byte(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: `+egress.path+"\n"), 0o600); err != nil {
		return fail("egress config: %v", err)
	}

	env := &envtest.Environment{
		CRDDirectoryPaths:       []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing:   true,
		ControlPlaneStopTimeout: 5 * time.Second,
	}
	env.ControlPlane.GetAPIServer().Configure().Set("egress-selector-config-file", egressConfig)
	cfg, err := env.Start()
	if err != nil {
		return fail("start envtest (KUBEBUILDER_ASSETS=%s): %v", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	defer func() { _ = env.Stop() }()
	scheme, err := newScheme()
	if err != nil {
		return fail("scheme: %v", err)
	}
	if suite.k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fail("client: %v", err)
	}
	suite.cfg, suite.egress = cfg, egress
	suite.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(cfg, suite.kubeconfig); err != nil {
		return fail("kubeconfig: %v", err)
	}

	// The manager, in process: the reconcilers every command relies on.
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme, Logger: logr.Discard(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  controllers.CacheOptions(nil),
	})
	if err != nil {
		return fail("manager: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := controllers.SetupWithManager(ctx, mgr, controllers.Options{}); err != nil {
		return fail("setup reconcilers: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "manager: %v\n", err)
		}
	}()
	defer wg.Wait()
	defer cancel()
	return m.Run()
}

func writeKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// result is one run of the plugin.
type result struct {
	out, err string
	code     int
}

// kg runs kubectl-keygate against the suite's API server, exactly as the
// binary does, with the suite's kubeconfig.
func kg(t *testing.T, args ...string) result {
	t.Helper()
	return kgWith(t, nil, args...)
}

func kgWith(t *testing.T, tweak func(*Options), args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	o := &Options{Flags: genericclioptions.NewConfigFlags(false),
		IO: genericiooptions.IOStreams{In: &bytes.Buffer{}, Out: &out, ErrOut: &errOut}, PollInterval: interval}
	if tweak != nil {
		tweak(o)
	}
	code := Run(append([]string{"--kubeconfig", suite.kubeconfig}, args...), o)
	t.Logf("kubectl keygate %v → %d\n%s%s", args, code, out.String(), errOut.String())
	return result{out.String(), errOut.String(), code}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}

// nsSeq makes namespace names unique, so the tests run again (-count) on
// the same API server.
var nsSeq atomic.Int32

// createNamespace creates a namespace named base-N and returns its name.
func createNamespace(t *testing.T, base string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", base, nsSeq.Add(1))
	if err := suite.k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
	return name
}

func createPolicy(t *testing.T, ns, name string, spec keygatev1.TokenPolicySpec) {
	t.Helper()
	if spec.Issuer == "" {
		spec.Issuer = "https://" + name + ".example.com"
	}
	if spec.Audience == "" {
		spec.Audience = name
	}
	p := &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	if err := suite.k8s.Create(context.Background(), p); err != nil {
		t.Fatalf("TokenPolicy %s: %v", name, err)
	}
	waitFor(t, operatorTimeout, "TokenPolicy "+name+" Ready", func() bool {
		got := &keygatev1.TokenPolicy{}
		return suite.k8s.Get(context.Background(), client.ObjectKeyFromObject(p), got) == nil &&
			meta.IsStatusConditionTrue(got.Status.Conditions, keygatev1.ConditionReady)
	})
}

func createKey(t *testing.T, ns, name string, spec keygatev1.ApiKeySpec) *keygatev1.ApiKey {
	t.Helper()
	k := &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	if err := suite.k8s.Create(context.Background(), k); err != nil {
		t.Fatalf("ApiKey %s: %v", name, err)
	}
	var got *keygatev1.ApiKey
	waitFor(t, operatorTimeout, "ApiKey "+name+" Ready and in the bundle", func() bool {
		got = &keygatev1.ApiKey{}
		if suite.k8s.Get(context.Background(), client.ObjectKeyFromObject(k), got) != nil ||
			!meta.IsStatusConditionTrue(got.Status.Conditions, keygatev1.ConditionReady) {
			return false
		}
		r := kg(t, "status", name, "-n", ns, "-o", "json")
		return r.code == 0 && bytes.Contains([]byte(r.out), []byte(`"inBundle": "yes"`))
	})
	return got
}

// egressProxy is an HTTP CONNECT proxy on a Unix socket that only connects
// to the loopback addresses registered for a target.
type egressProxy struct {
	path string
	ln   net.Listener
	srv  *http.Server
	mu   sync.Mutex
	to   map[string]string
}

func startEgressProxy(path string) (*egressProxy, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	p := &egressProxy{path: path, ln: ln, to: map[string]string{}}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: nil}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// route makes CONNECT target (host:port) reach the loopback address addr.
func (p *egressProxy) route(target, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.to[target] = addr
}

func (p *egressProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	addr, ok := p.to[r.Host]
	p.mu.Unlock()
	if r.Method != http.MethodConnect || !ok {
		http.Error(w, "no route to "+r.Host, http.StatusForbidden)
		return
	}
	up, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = up.Close()
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	_, _ = conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	go func() {
		_, _ = io.Copy(up, buf)
		_ = up.Close()
	}()
	_, _ = io.Copy(conn, up)
	_ = conn.Close()
}

func (p *egressProxy) close() { _ = p.srv.Close() }

// quietLog discards the in-process sidecars' logs.
var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))
