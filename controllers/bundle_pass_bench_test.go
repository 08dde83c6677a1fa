package controllers

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// memCache is an in-memory stand-in for the manager's cache and API server,
// just enough for a bundle pass (ensureBundle): it hands out the stored
// objects the way the cache does with UnsafeDisableDeepCopy (a shallow copy
// of each into the list), and a write is visible at once. It lets a
// benchmark time the pass itself at 100,000 keys without an API server.
type memCache struct {
	client.Client // nil: any other call panics
	scheme        *kruntime.Scheme

	mu       sync.Mutex
	rv       int64
	keys     []*keygatev1.ApiKey // in creation order
	keyIndex map[string]int      // by name
	secrets  map[string]*corev1.Secret
	order    []string // secret names in creation order
	writes   int
	// buckets indexes the keys by indexPolicyRef (positions in keys); nil
	// after a key is added or deleted.
	buckets map[string][]int
}

func (m *memCache) Scheme() *kruntime.Scheme { return m.scheme }

func (m *memCache) nextRV() string {
	m.rv++
	return strconv.FormatInt(m.rv, 10)
}

func (m *memCache) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := obj.(*keygatev1.ApiKey); ok {
		i, found := m.keyIndex[key.Name]
		if !found {
			return apierrors.NewNotFound(keygatev1.GroupVersion.WithResource("apikeys").GroupResource(), key.Name)
		}
		*k = *m.keys[i]
		return nil
	}
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return fmt.Errorf("memCache: Get of %T", obj)
	}
	found := m.secrets[key.Name]
	if found == nil {
		return apierrors.NewNotFound(corev1.Resource("secrets"), key.Name)
	}
	*s = *found
	return nil
}

func (m *memCache) List(_ context.Context, list client.ObjectList, opts ...client.ListOption) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := &client.ListOptions{}
	o.ApplyOptions(opts)
	switch l := list.(type) {
	case *keygatev1.ApiKeyList:
		l.Items = nil
		if o.FieldSelector == nil {
			for _, k := range m.keys {
				l.Items = append(l.Items, *k)
			}
			break
		}
		if m.buckets == nil { // the cache's index (indexPolicyRef)
			m.buckets = map[string][]int{}
			for i, k := range m.keys {
				b := policyBucket(k.Spec.PolicyRef.Name, k.Name)
				m.buckets[b] = append(m.buckets[b], i)
			}
		}
		for value, ixs := range m.buckets {
			if o.FieldSelector.Matches(fields.Set{indexPolicyRef: value}) {
				l.Items = make([]keygatev1.ApiKey, len(ixs))
				for j, i := range ixs {
					l.Items[j] = *m.keys[i]
				}
			}
		}
	case *corev1.SecretList:
		sel := o.LabelSelector
		if sel == nil {
			sel = labels.Everything()
		}
		l.Items = l.Items[:0]
		for _, name := range m.order {
			if s := m.secrets[name]; s != nil && sel.Matches(labels.Set(s.Labels)) {
				l.Items = append(l.Items, *s)
			}
		}
	default:
		return fmt.Errorf("memCache: List of %T", list)
	}
	return nil
}

func (m *memCache) store(s *corev1.Secret) {
	m.writes++
	s.ResourceVersion = m.nextRV()
	if _, ok := m.secrets[s.Name]; !ok {
		m.order = append(m.order, s.Name)
	}
	m.secrets[s.Name] = s.DeepCopy()
}

func (m *memCache) Create(_ context.Context, obj client.Object, _ ...client.CreateOption) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return fmt.Errorf("memCache: Create of %T", obj)
	}
	if _, exists := m.secrets[s.Name]; exists {
		return apierrors.NewAlreadyExists(corev1.Resource("secrets"), s.Name)
	}
	m.store(s)
	return nil
}

func (m *memCache) Update(_ context.Context, obj client.Object, _ ...client.UpdateOption) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return fmt.Errorf("memCache: Update of %T", obj)
	}
	cur := m.secrets[s.Name]
	if cur == nil {
		return apierrors.NewNotFound(corev1.Resource("secrets"), s.Name)
	}
	if cur.ResourceVersion != s.ResourceVersion {
		return apierrors.NewConflict(corev1.Resource("secrets"), s.Name, fmt.Errorf("stale"))
	}
	m.store(s)
	return nil
}

// updateKey replaces the ApiKey at i with a changed copy (a new
// resourceVersion and generation, as the API server would).
func (m *memCache) updateKey(i int, change func(*keygatev1.ApiKey)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.keys[i].DeepCopy()
	change(k)
	k.Generation++
	k.ResourceVersion = m.nextRV()
	m.keys[i] = k
}

// addKey stores a new ApiKey of policy "p" created at created, and its
// credentials Secret (version 1, rotated at now).
func (m *memCache) addKey(tb testing.TB, name string, created, now time.Time, opts ...func(*keygatev1.ApiKey)) *keygatev1.ApiKey {
	tb.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	k := newApiKey("bench", name, "p", opts...)
	k.UID = types.UID("uid-" + name)
	k.Generation = 1
	k.ResourceVersion = m.nextRV()
	k.CreationTimestamp = metav1.NewTime(created)
	m.keyIndex[k.Name] = len(m.keys)
	m.keys = append(m.keys, k)
	m.buckets = nil
	secret, err := newSecret()
	if err != nil {
		tb.Fatal(err)
	}
	keyID, err := newKeyID()
	if err != nil {
		tb.Fatal(err)
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: credentialsSecretName(k),
		Labels: map[string]string{keygatev1.LabelManagedBy: keygatev1.ManagedByValue,
			keygatev1.LabelTokenPolicy: "p", keygatev1.LabelApiKey: k.Name},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: keygatev1.GroupVersion.String(), Kind: "ApiKey",
			Name: k.Name, UID: k.UID, Controller: new(true)}}}}
	writeCredentials(s, credentials{KeyID: keyID, Secret: secret, Version: 1, RotatedAt: now})
	m.store(s)
	return k
}

// deleteKey removes ApiKey name and its credentials Secret.
func (m *memCache) deleteKey(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i, ok := m.keyIndex[name]
	if !ok {
		return
	}
	delete(m.secrets, credentialsSecretName(m.keys[i]))
	m.keys = append(m.keys[:i], m.keys[i+1:]...)
	delete(m.keyIndex, name)
	m.buckets = nil
	for j := i; j < len(m.keys); j++ {
		m.keyIndex[m.keys[j].Name] = j
	}
}

// updateSecret replaces the credentials Secret of ApiKey name with a
// changed copy.
func (m *memCache) updateSecret(name string, change func(*corev1.Secret)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.secrets[name+"-credentials"].DeepCopy()
	change(s)
	m.store(s)
}

// benchPolicy fills a memCache with a sharded policy of n Ready-able keys
// (each with its credentials Secret) and returns a reconciler on it.
func benchPolicy(tb testing.TB, n int) (*TokenPolicyReconciler, *memCache, *policyPass) {
	tb.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	m := &memCache{scheme: scheme, secrets: map[string]*corev1.Secret{}, keyIndex: map[string]int{}}
	p := newPolicy("bench", "p", withMaxApiKeys(int32(n))) //nolint:gosec // a benchmark size
	p.UID = types.UID("policy-uid")
	p.Generation = 1
	st, _, err := nextSigning(p, signingState{}, now)
	if err != nil {
		tb.Fatal(err)
	}
	created := now.Add(-time.Duration(n) * time.Second)
	for i := range n {
		m.addKey(tb, fmt.Sprintf("key-%06d", i), created.Add(time.Duration(i)*time.Second), now)
	}
	r := &TokenPolicyReconciler{Client: m, Clock: clock.RealClock{}, incremental: true}
	return r, m, &policyPass{policy: p, signing: st, now: now}
}

// BenchmarkBundlePass times one TokenPolicy bundle pass (ensureBundle) of a
// sharded policy after one ApiKey changed (disabled, then enabled again),
// the pass that carries a single change to the sidecars, at 10,000 and
// 100,000 keys: "incremental" as the manager runs it, "full" a pass that
// reads every key (after a restart, a policy change, every fullPassEvery).
// It logs the first pass's time too (credentials not parsed yet).
func BenchmarkBundlePass(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		for _, mode := range []string{"incremental", "full"} {
			b.Run(fmt.Sprintf("%s/%d", mode, n), func(b *testing.B) {
				r, m, pass := benchPolicy(b, n)
				ctx := context.Background()
				heapBefore := liveHeap()
				start := time.Now()
				if _, err := r.ensureBundle(ctx, pass); err != nil {
					b.Fatal(err)
				}
				b.Logf("%d keys: first (full) pass %v; what the reconciler keeps between passes (state, pace, credentials memo): %.1f MiB",
					n, time.Since(start), float64(liveHeap()-heapBefore)/(1<<20))
				if pass.policy.Status.ApiKeys != int32(n) { //nolint:gosec // a benchmark size
					b.Fatalf("first pass bundled %d keys, want %d", pass.policy.Status.ApiKeys, n)
				}
				policy := client.ObjectKeyFromObject(pass.policy)
				writes := m.writes
				b.ResetTimer()
				i := 0
				for b.Loop() {
					m.updateKey(i%n, func(k *keygatev1.ApiKey) { k.Spec.Disabled = !k.Spec.Disabled })
					r.touchApiKey("p", m.keys[i%n])
					if mode == "full" {
						r.shardStates.m[policy].built = time.Time{} // as after fullPassEvery
					}
					if _, err := r.ensureBundle(ctx, pass); err != nil {
						b.Fatal(err)
					}
					i++
				}
				b.StopTimer()
				if got := (m.writes - writes) / i; got != 1 {
					b.Fatalf("%d shard writes per pass, want 1", got)
				}
				if want := int32(n - i); pass.policy.Status.ApiKeys != want { //nolint:gosec // a benchmark size
					b.Fatalf("%d keys bundled after %d disabled, want %d", pass.policy.Status.ApiKeys, i, want)
				}
			})
		}
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc) //nolint:gosec // a heap size fits
}
