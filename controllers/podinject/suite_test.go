package podinject

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers/webhookcert"
)

// Polling of eventually-consistent state.
const (
	timeout  = 30 * time.Second
	interval = 100 * time.Millisecond
)

// operatorNamespace is the manager's namespace, excluded by config/webhook.
const operatorNamespace = "keygate-system"

var (
	restConfig *rest.Config
	k8sClient  client.Client
	injectOpts *Options
	// webhookAddr is the address the webhook server bound (port 0: the
	// kernel's choice, so no port is picked first and bound later).
	webhookAddr string
	admissions  = &admissionLog{seen: map[string][]string{}}
	nsCount     atomic.Int32
)

// logBuffer collects the manager's logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var logs = &logBuffer{}

// admissionLog records every admission the handler saw: "namespace/name" → results.
type admissionLog struct {
	mu   sync.Mutex
	seen map[string][]string
}

func (l *admissionLog) record(req admission.Request, result string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := req.Namespace + "/" + req.Name
	l.seen[k] = append(l.seen[k], result)
}

func (l *admissionLog) results(namespace, name string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seen[namespace+"/"+name]...)
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) (code int) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run() // fuzzing exercises inject alone: no API server per fuzz worker
	}
	// Logs are shown only when something failed.
	ctrl.SetLogger(zap.New(zap.WriteTo(logs), zap.UseDevMode(true)))
	defer func() {
		if code != 0 {
			os.Stderr.WriteString(logs.String()) //nolint:errcheck,gosec // best effort
		}
	}()
	scheme := runtime.NewScheme()
	must(clientgoscheme.AddToScheme(scheme))
	must(keygatev1.AddToScheme(scheme))

	env := &envtest.Environment{
		Scheme:                scheme,
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			// The real manifest: selectors, failure policy, timeout.
			Paths: []string{filepath.Join("..", "..", "config", "webhook")},
			// The API server dials https://localhost:<port>, the name the
			// certificate is for; the port is set once the server has bound
			// one (pointWebhookAt).
			LocalServingHostExternalName: "localhost",
		},
	}
	cfg, err := env.Start()
	must(err)
	restConfig = cfg
	defer func() { must(env.Stop()) }()

	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	must(err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	must(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}))

	certDir, err := os.MkdirTemp("", "keygate-webhook-certs")
	must(err)
	defer os.RemoveAll(certDir) //nolint:errcheck // best effort
	wio := &env.WebhookInstallOptions
	injectOpts = &Options{
		Image: DefaultImage, Version: DefaultVersion,
		CPURequest: "50m", MemoryRequest: "64Mi", MemoryLimit: "128Mi",
		CertMode: webhookcert.ModeSelfSigned, CertDir: certDir,
		Namespace: operatorNamespace, Host: wio.LocalServingHost, Port: 0,
		CertOptions: func(o *webhookcert.Options) { o.DNSName = "localhost" },
		observe:     admissions.record,
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:        scheme,
		Metrics:       metricsserver.Options{BindAddress: "0"},
		WebhookServer: injectOpts.WebhookServer(),
	})
	must(err)
	// The readiness check is called directly: no probe port to pick.
	checks := &readyzChecks{Manager: mgr, checks: map[string]healthz.Checker{}}
	must(Setup(checks, injectOpts))
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()

	// Readiness waits for a valid certificate whose CA is in the caBundle.
	must(poll(func() error {
		check, ok := checks.checks[ReadyzCheckName]
		if !ok {
			return fmt.Errorf("no readiness check %q registered", ReadyzCheckName)
		}
		return check(httptest.NewRequest(http.MethodGet, "/readyz", nil))
	}))
	webhookAddr = mgr.GetWebhookServer().(*webhookServer).boundAddr() // set: readiness dials it
	must(pointWebhookAt(ctx, webhookAddr))
	// The API server picks up the new caBundle shortly after.
	ns := newNamespace(ctx)
	must(poll(func() error {
		return k8sClient.Create(ctx, podIn(ns, "warm-up"), client.DryRunAll)
	}))

	code = m.Run()
	cancel()
	must(<-done)
	return code
}

// pointWebhookAt sets the URL of config/webhook's webhook (installed by
// envtest) to the webhook server's bound address, by a JSON patch of that one
// field: the caBundle beside it is the manager's to keep.
func pointWebhookAt(ctx context.Context, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	url := "https://" + net.JoinHostPort("localhost", port) + WebhookPath
	patch := fmt.Sprintf(`[{"op":"replace","path":"/webhooks/0/clientConfig/url","value":%q}]`, url)
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: DefaultWebhookConfigName}}
	return k8sClient.Patch(ctx, wh, client.RawPatch(types.JSONPatchType, []byte(patch)))
}

func poll(f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// readyzChecks records the readiness checks Setup adds to the manager.
type readyzChecks struct {
	manager.Manager
	checks map[string]healthz.Checker
}

func (r *readyzChecks) AddReadyzCheck(name string, check healthz.Checker) error {
	r.checks[name] = check
	return r.Manager.AddReadyzCheck(name, check)
}

// newNamespace creates a fresh namespace holding the TokenPolicy payments-api.
func newNamespace(ctx context.Context) string {
	name := fmt.Sprintf("shop-%d", nsCount.Add(1))
	must(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}))
	must(k8sClient.Create(ctx, &keygatev1.TokenPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "payments-api", Namespace: name},
		Spec:       keygatev1.TokenPolicySpec{Issuer: "https://payments.example.com", Audience: "payments-api"},
	}))
	return name
}

// podIn is newPod (see inject_test.go) named name in namespace ns.
func podIn(ns, name string, opts ...podOption) *corev1.Pod {
	p := newPod(opts...)
	p.Namespace, p.Name = ns, name
	return p
}

func sleep() { time.Sleep(interval) }
