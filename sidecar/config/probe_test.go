package config

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

// faultyTransport sits between a sidecar's client and a real API server: it
// counts the plain GETs of each object (the probe's reads; lists and watches
// select their object with a field selector instead), and refuses the lists
// and watches of chosen objects, or every request, as an unreachable API
// server does (connection refused), closing their open watches.
type faultyTransport struct {
	next http.RoundTripper

	mu      sync.Mutex
	gets    map[string]int
	refused map[string]bool
	down    bool
	watches map[string][]io.Closer
}

// object returns the name of the object a request reads and whether it is a
// plain GET of it (not a list or a watch).
func object(r *http.Request) (string, bool) {
	if name, ok := strings.CutPrefix(r.URL.Query().Get("fieldSelector"), "metadata.name="); ok {
		return name, false
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	// api/v1/namespaces/NS/RESOURCE/NAME
	if r.Method == http.MethodGet && len(parts) == 6 && parts[2] == "namespaces" {
		return parts[5], true
	}
	return "", false
}

func (t *faultyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	name, get := object(r)
	t.mu.Lock()
	if t.down || (!get && t.refused[name]) {
		t.mu.Unlock()
		return nil, fmt.Errorf("test transport: %w", syscall.ECONNREFUSED)
	}
	if get {
		t.gets[name]++
	}
	t.mu.Unlock()
	resp, err := t.next.RoundTrip(r)
	if err == nil && r.URL.Query().Get("watch") == "true" {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.down || t.refused[name] {
			// refused while the request was on its way: cut at once
			_ = resp.Body.Close()
		} else {
			t.watches[name] = append(t.watches[name], resp.Body)
		}
	}
	return resp, err
}

// refuse refuses the lists and watches of the named objects from now on and
// closes their open watches; with no names the whole API server is down.
func (t *faultyTransport) refuse(names ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(names) == 0 {
		t.down = true
		names = slices.Collect(func(yield func(string) bool) {
			for name := range t.watches {
				if !yield(name) {
					return
				}
			}
		})
	}
	for _, name := range names {
		t.refused[name] = true
		for _, body := range t.watches[name] {
			_ = body.Close()
		}
		delete(t.watches, name)
	}
}

// restore lets every request through again and starts the GET counts anew.
func (t *faultyTransport) restore() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.down = false
	t.refused = map[string]bool{}
	t.gets = map[string]int{}
}

func (t *faultyTransport) getsOf(name string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gets[name]
}

// startAPIServer starts a kube-apiserver (envtest) for the test.
func startAPIServer(t *testing.T) *envtest.Environment {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		abs, err := filepath.Abs("../../bin/k8s")
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("KUBEBUILDER_ASSETS", abs)
	}
	env := &envtest.Environment{ControlPlaneStopTimeout: 3 * time.Second}
	if _, err := env.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return env
}

// The outage probe catches up per object. One shard watch's failure makes
// the probe read that shard only, never the other shards nor the index (at
// 100,000 keys reading all 64 shards every second for 30 s was 540 MiB per
// hiccup per sidecar), and the failing shard's changes are still in force
// within the probe's period. An outage of the whole API server fails every
// watch, so after its return every object is read.
func TestProbeCatchesUpPerObject(t *testing.T) {
	g := NewWithT(t)
	env := startAPIServer(t)
	admin := kubernetes.NewForConfigOrDie(env.Config)
	ctx := context.Background()
	const ns, count = "probe", 4
	_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	f := bundletest.New("EdDSA")
	for i := range 16 {
		f.AddKey(fmt.Sprintf("apk-%02d", i), []string{"charges:List"})
	}
	index, shards := shardSecrets(t, f, count, 0)
	for _, s := range append(shards, index) {
		s.ResourceVersion = ""
		_, err := admin.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
		g.Expect(err).NotTo(HaveOccurred())
	}
	cmName := bundle.RevocationsConfigMapName("p")
	_, err = admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: cmName}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	objects := []string{index.Name, cmName}
	for _, s := range shards {
		objects = append(objects, s.Name)
	}

	tr := &faultyTransport{gets: map[string]int{}, refused: map[string]bool{}, watches: map[string][]io.Closer{}}
	cfg := *env.Config
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { tr.next = rt; return tr }
	client, err := NewCoreClient(&cfg)
	g.Expect(err).NotTo(HaveOccurred())
	k := &Kubernetes{Client: client, Namespace: ns, Policy: "p", Store: &Store{}, Revoked: revocation.NewSet(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- k.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	g.Eventually(func() int {
		if rt := k.Store.Load(); rt != nil {
			return rt.KeyCount()
		}
		return 0
	}, 30*time.Second, 20*time.Millisecond).Should(Equal(16))

	// disable removes a key from the bundle: its shard is rewritten.
	disable := func(id string) {
		f.Bundle.Keys = slices.DeleteFunc(f.Bundle.Keys, func(k bundle.Key) bool { return k.KeyID == id })
		_, next := shardSecrets(t, f, count, 0)
		place := bundle.ShardOf(id, count)
		s, err := admin.CoreV1().Secrets(ns).Get(ctx, next[place].Name, metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		s.Data = next[place].Data
		_, err = admin.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
		g.Expect(err).NotTo(HaveOccurred())
	}
	keyIn := func(id string) func() bool {
		return func() bool { return k.Store.Load().Key(id) != nil }
	}
	// failing lists the objects whose last list or watch call failed.
	failing := func() []string {
		k.mu.Lock()
		defer k.mu.Unlock()
		var out []string
		for what, err := range k.health {
			if err != nil {
				out = append(out, what[strings.Index(what, " ")+1:])
			}
		}
		return out
	}

	// One shard's watch fails: the probe reads that shard, and only it.
	broken := shards[2].Name
	var gone string
	for _, key := range f.Bundle.Keys {
		if bundle.ShardOf(key.KeyID, count) == 2 {
			gone = key.KeyID
			break
		}
	}
	g.Expect(gone).NotTo(BeEmpty())
	tr.refuse(broken)
	g.Eventually(failing, 10*time.Second, 20*time.Millisecond).Should(ConsistOf(broken))
	disable(gone) // reaches the sidecar through the probe only: the shard's watch is refused
	g.Eventually(keyIn(gone), 5*time.Second, 20*time.Millisecond).Should(BeFalse())
	g.Eventually(func() int { return tr.getsOf(broken) }, 5*time.Second, 20*time.Millisecond).Should(BeNumerically(">=", 3))
	for _, name := range objects {
		if name != broken {
			g.Expect(tr.getsOf(name)).To(BeZero(), "GETs of %s while only %s failed", name, broken)
		}
	}
	t.Logf("one shard watch failing: %d GETs of %s, none of the %d other objects", tr.getsOf(broken), broken, len(objects)-1)

	// The whole API server is down: every watch fails, and after its return
	// the probe reads every object, so a change made right after the
	// return is in force within its period.
	tr.refuse()
	g.Eventually(failing, 10*time.Second, 20*time.Millisecond).Should(ConsistOf(objects))
	tr.restore()
	gone = f.Bundle.Keys[0].KeyID
	disable(gone)
	g.Eventually(keyIn(gone), 5*time.Second, 20*time.Millisecond).Should(BeFalse())
	for _, name := range objects {
		g.Eventually(func() int { return tr.getsOf(name) }, 5*time.Second, 20*time.Millisecond).Should(BeNumerically(">=", 1), "GETs of %s after the return", name)
	}
	g.Eventually(func() error { return k.Store.Status().Stale }, 5*time.Second, 20*time.Millisecond).Should(Succeed())
}
