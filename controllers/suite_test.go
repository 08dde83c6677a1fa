package controllers

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Polling of eventually-consistent state.
const (
	timeout  = 20 * time.Second
	interval = 50 * time.Millisecond
)

var (
	cfg       *rest.Config
	k8sClient client.Client
	scheme    = runtime.NewScheme()
	// logs captures everything every test manager logs, at every verbosity.
	logs    = &logBuffer{}
	testLog logr.Logger
	nsCount atomic.Int32
)

type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) write(prefix, args string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintf(&b.buf, "%s %s\n", prefix, args)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := keygatev1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	// The manager's own cap applies over a capture that would take every level.
	testLog = CapVerbosity(funcr.New(logs.write, funcr.Options{Verbosity: 10}))
	ctrl.SetLogger(testLog)
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	if cfg, err = env.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start envtest (KUBEBUILDER_ASSETS=bin/k8s):", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if k8sClient, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// testManager is one running operator, scoped to one namespace.
type testManager struct {
	mgr    ctrl.Manager
	client client.Client
	stop   func()
}

// startManager runs the reconcilers against the test's namespace with clk
// until the test ends (or stop is called).
func startManager(t *testing.T, ns string, clk clock.PassiveClock) *testManager {
	t.Helper()
	return startManagerWith(t, ns, clk, cfg)
}

// startManagerWith is startManager with its own client configuration c,
// its options changed by tune.
func startManagerWith(t *testing.T, ns string, clk clock.PassiveClock, c *rest.Config, tune ...func(*ctrl.Options)) *testManager {
	t.Helper()
	mgr := newTestManagerWith(t, ns, c, tune...)
	ctx, cancel := context.WithCancel(context.Background())
	if err := SetupWithManager(ctx, mgr, Options{Clock: clk}); err != nil {
		t.Fatalf("set up reconcilers: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &testManager{mgr: mgr, client: mgr.GetClient(), stop: stop}
}

// newTestManager makes a manager with the operator's cache options, scoped to ns.
func newTestManager(t *testing.T, ns string) ctrl.Manager {
	t.Helper()
	return newTestManagerWith(t, ns, cfg)
}

// newTestManagerWith is newTestManager with its own client configuration c,
// its options changed by tune.
func newTestManagerWith(t *testing.T, ns string, c *rest.Config, tune ...func(*ctrl.Options)) ctrl.Manager {
	t.Helper()
	opts := ctrl.Options{
		Scheme:                 scheme,
		Logger:                 testLog,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  CacheOptions([]string{ns}),
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	}
	for _, f := range tune {
		f(&opts)
	}
	mgr, err := ctrl.NewManager(c, opts)
	if err != nil {
		t.Fatalf("create manager: %v", err)
	}
	return mgr
}

// withKeysPerShard sets bundle.KeysPerShard to n for the rest of tb. Call it
// before starting a manager: cleanups run last-in first-out, so the value
// is restored after the managers the test started have stopped.
func withKeysPerShard(tb testing.TB, n int) {
	saved := bundle.KeysPerShard
	bundle.KeysPerShard = n
	tb.Cleanup(func() { bundle.KeysPerShard = saved })
}

// newNamespace creates a namespace of its own for a test.
func newNamespace(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("kg-%d-%d", os.Getpid()%10000, nsCount.Add(1))
	if err := k8sClient.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return name
}

// Fixture builders.

func newPolicy(ns, name string, opts ...func(*keygatev1.TokenPolicy)) *keygatev1.TokenPolicy {
	p := &keygatev1.TokenPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       keygatev1.TokenPolicySpec{Issuer: "https://api.example.com", Audience: "api"},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func withMaxApiKeys(n int32) func(*keygatev1.TokenPolicy) {
	return func(p *keygatev1.TokenPolicy) { p.Spec.MaxApiKeys = n }
}

func withSigning(alg keygatev1.SigningAlgorithm, every time.Duration, ttl time.Duration) func(*keygatev1.TokenPolicy) {
	return func(p *keygatev1.TokenPolicy) {
		p.Spec.Signing = keygatev1.Signing{Algorithm: alg, RotationInterval: &metav1.Duration{Duration: every}}
		p.Spec.TokenTTL = &metav1.Duration{Duration: ttl}
		p.Spec.ClientTokenTTL = &metav1.Duration{Duration: ttl / 2}
	}
}

func newApiKey(ns, name, policy string, opts ...func(*keygatev1.ApiKey)) *keygatev1.ApiKey {
	k := &keygatev1.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: keygatev1.ApiKeySpec{
			PolicyRef:   keygatev1.PolicyReference{Name: policy},
			Permissions: []keygatev1.Permission{"charges:List", "reports:All"},
		},
	}
	for _, o := range opts {
		o(k)
	}
	return k
}

func withRotation(every, grace time.Duration) func(*keygatev1.ApiKey) {
	return func(k *keygatev1.ApiKey) {
		k.Spec.Rotation = &keygatev1.KeyRotation{GracePeriod: &metav1.Duration{Duration: grace}}
		if every > 0 {
			k.Spec.Rotation.Interval = &metav1.Duration{Duration: every}
		}
	}
}

func withExpiry(t time.Time) func(*keygatev1.ApiKey) {
	return func(k *keygatev1.ApiKey) { k.Spec.ExpiresAt = &metav1.Time{Time: t} }
}

func withSecretName(name string) func(*keygatev1.ApiKey) {
	return func(k *keygatev1.ApiKey) { k.Spec.SecretName = name }
}

// Helpers reading the API server directly (not a cache).

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8sClient.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func getApiKey(g Gomega, ns, name string) *keygatev1.ApiKey {
	k := &keygatev1.ApiKey{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, k)).To(Succeed())
	return k
}

// readyReasonOf is the Ready condition's status and reason, "" when unset.
func readyReasonOf(g Gomega, ns, name string) string {
	k := getApiKey(g, ns, name)
	c := meta.FindStatusCondition(k.Status.Conditions, keygatev1.ConditionReady)
	if c == nil || c.ObservedGeneration != k.Generation {
		return ""
	}
	return string(c.Status) + "/" + c.Reason
}

// waitReason waits for an ApiKey's Ready condition to be status/reason.
func waitReason(t *testing.T, ns, name, want string) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) string { return readyReasonOf(g, ns, name) }, timeout, interval).Should(Equal(want), "ApiKey %s", name)
}

type creds struct{ KeyID, Secret, Authorization string }

func getCreds(g Gomega, ns, name string) (creds, *corev1.Secret) {
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s)).To(Succeed())
	return creds{string(s.Data["key"]), string(s.Data["secret"]), string(s.Data["authorization"])}, s
}

// bundleOf reads and parses a policy's bundle Secret.
func bundleOf(g Gomega, ns, policy string) (*bundle.Bundle, []byte) {
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: bundle.SecretName(policy)}, s)).To(Succeed())
	raw := s.Data[bundle.SecretDataKey]
	b, err := bundle.Parse(raw)
	g.Expect(err).NotTo(HaveOccurred())
	return b, raw
}

// bundleDigests maps key ID to the digests the bundle holds for it.
func bundleDigests(g Gomega, ns, policy string) map[string][][]byte {
	b, _ := bundleOf(g, ns, policy)
	out := map[string][][]byte{}
	for _, k := range b.Keys {
		for _, s := range k.Secrets {
			out[k.KeyID] = append(out[k.KeyID], s.Digest)
		}
	}
	return out
}

// digestOf is the digest a secret has in the policy's bundle as it is now.
// Use it only once the bundle is known to exist (after a synchronous
// reconcile); to wait for the operator, use waitDigests, which computes the
// expectation inside the poll.
func digestOf(g Gomega, ns, policy, secret string) []byte {
	b, _ := bundleOf(g, ns, policy)
	return bundle.Digest(b.HashKey, secret)
}

// waitDigests waits until the policy's bundle holds, for keyID, exactly the
// digests of secrets in that order. The expectation is computed inside the
// polled function: the digests depend on the bundle's hash key, which exists
// only once the operator has written the bundle.
func waitDigests(t *testing.T, ns, policy, keyID string, secrets ...string) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		b, _ := bundleOf(g, ns, policy)
		want := make([][]byte, 0, len(secrets))
		for _, s := range secrets {
			want = append(want, bundle.Digest(b.HashKey, s))
		}
		var got [][]byte
		for _, k := range b.Keys {
			if k.KeyID == keyID {
				for _, s := range k.Secrets {
					got = append(got, s.Digest)
				}
			}
		}
		g.Expect(got).To(Equal(want), "digests of key %s in the bundle of %s", keyID, policy)
	}, timeout, interval).Should(Succeed())
}

// poke changes an annotation so the object is reconciled now. With a fake
// clock the workqueue's RequeueAfter timers (real time) cannot fire, so a
// test that steps the clock stands in for them this way.
func poke(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{"test.keygate.dev/poke":"%d"}}}`, time.Now().UnixNano()))
		if err := k8sClient.Patch(context.Background(), o, client.RawPatch(types.MergePatchType, patch)); err != nil {
			t.Fatalf("poke %s: %v", o.GetName(), err)
		}
	}
}

// eventsOf lists the Events (events.k8s.io/v1) in ns.
func eventsOf(g Gomega, ns string) []eventsv1.Event {
	list := &eventsv1.EventList{}
	g.Expect(k8sClient.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
	return list.Items
}

// eventReasons lists the reasons of the Events about one object.
func eventReasons(g Gomega, ns, name string) []string {
	var out []string
	for _, e := range eventsOf(g, ns) {
		if e.Regarding.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}

var keyIDPattern = regexp.MustCompile(`^apk-[A-Za-z0-9]{20}$`)
var secretPattern = regexp.MustCompile(`^[A-Za-z0-9]{43}$`)
