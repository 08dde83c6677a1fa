package controllers

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// benchCacheKeys is how many keys BenchmarkCacheLiveHeap caches.
const benchCacheKeys = 100_000

// serverCopy is obj as a client decodes it from the API server: every
// string its own allocation (a JSON round trip).
func serverCopy[T any](tb testing.TB, obj *T) *T {
	tb.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		tb.Fatal(err)
	}
	out := new(T)
	if err := json.Unmarshal(raw, out); err != nil {
		tb.Fatal(err)
	}
	return out
}

// settledKey is an ApiKey and its credentials Secret as make bench-scale
// leaves them once Ready: the ApiKey with the benchmark's spec and the
// status the manager wrote, the Secret as the manager wrote it.
func settledKey(tb testing.TB, i int) (*keygatev1.ApiKey, *corev1.Secret) {
	tb.Helper()
	// bench-scale creates some 130 keys a second; each is Ready a little
	// later, in the shard its key ID falls in.
	now := metav1.NewTime(time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC).Add(time.Duration(i/130) * time.Second))
	ready := metav1.NewTime(now.Add(time.Duration(i%7) * time.Second))
	key := newApiKey("operator-100000", fmt.Sprintf("key-%06d", i), "bench")
	key.TypeMeta = metav1.TypeMeta{APIVersion: keygatev1.GroupVersion.String(), Kind: "ApiKey"}
	key.UID = types.UID(fmt.Sprintf("6f0c1d2e-3a4b-4c5d-8e9f-%012d", i))
	key.ResourceVersion, key.Generation, key.CreationTimestamp = fmt.Sprint(1_000_000+i), 1, now
	key.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "scale.test", Operation: metav1.ManagedFieldsOperationUpdate, Time: &now}}
	c := credentials{KeyID: fmt.Sprintf("apk-%020d", i), Secret: fmt.Sprintf("%043d", i), Version: 1, RotatedAt: now.Time, Intact: true}
	key.Status = keygatev1.ApiKeyStatus{KeyID: c.KeyID, SecretName: key.Name + "-credentials", SecretVersion: 1, LastRotationTime: &now, ObservedGeneration: 1}
	meta.SetStatusCondition(&key.Status.Conditions, metav1.Condition{Type: keygatev1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: keygatev1.ReasonReady, Message: fmt.Sprintf("The key is accepted by TokenPolicy %q and its current secret is in bundle Secret keygate--bench-64-%d.", "bench", bundle.ShardOf(c.KeyID, 64)),
		ObservedGeneration: 1, LastTransitionTime: ready})
	s := &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Status.SecretName, UID: types.UID(fmt.Sprintf("7a1b2c3d-4e5f-4a6b-9c8d-%012d", i)),
			ResourceVersion: fmt.Sprint(2_000_000 + i), CreationTimestamp: now,
			Labels:        map[string]string{keygatev1.LabelManagedBy: keygatev1.ManagedByValue, keygatev1.LabelApiKey: key.Name, keygatev1.LabelTokenPolicy: "bench"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "keygate", Operation: metav1.ManagedFieldsOperationUpdate, Time: &now}}}}
	writeCredentials(s, c)
	s.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(key, keygatev1.GroupVersion.WithKind("ApiKey"))}
	return serverCopy(tb, key), serverCopy(tb, s)
}

// BenchmarkCacheLiveHeap reports what the manager's cache keeps per key at
// 100,000 keys (make bench-scale's objects, once Ready): each ApiKey and
// credentials Secret as the cache's transform leaves it, and the informer
// stores with the manager's indexes (namespace; an ApiKey's policy and key
// ID, per namespace). Figures are live heap after a GC, per key. "watched"
// transforms each object once, as the watch of a running manager does;
// "started" twice, as the informers' initial list does on every start
// (client-go's watch-list transforms into a store of its own, then its
// queue's Replace transforms again).
func BenchmarkCacheLiveHeap(b *testing.B) {
	b.Run("watched", func(b *testing.B) { benchCacheLiveHeap(b, 1) })
	b.Run("started", func(b *testing.B) { benchCacheLiveHeap(b, 2) })
}

func benchCacheLiveHeap(b *testing.B, transforms int) {
	trim := func(o any) any {
		for range transforms {
			var err error
			if o, err = trimForCache(o); err != nil {
				b.Fatal(err)
			}
		}
		return o
	}
	for b.Loop() {
		keys := make([]any, benchCacheKeys)
		secrets := make([]any, benchCacheKeys)
		base := liveHeap()
		for i := range benchCacheKeys {
			k, s := settledKey(b, i)
			keys[i], secrets[i] = trim(k), trim(s)
		}
		objects := liveHeap()
		indexers := apiKeyIndexers()
		indexers[toolscache.NamespaceIndex] = toolscache.MetaNamespaceIndexFunc
		keyStore := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, indexers)
		secretStore := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{
			toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc,
		})
		for i := range benchCacheKeys {
			if err := keyStore.Add(keys[i]); err != nil {
				b.Fatal(err)
			}
		}
		withKeyStore := liveHeap()
		for i := range benchCacheKeys {
			if err := secretStore.Add(secrets[i]); err != nil {
				b.Fatal(err)
			}
		}
		stores := liveHeap()
		// Objects: ApiKeys and Secrets apart (the Secrets alone, once the
		// ApiKeys are dropped from the slice and the store).
		keyObjects := func() int64 {
			for i := range keys {
				_ = keyStore.Delete(keys[i])
				keys[i] = nil
			}
			return liveHeap()
		}()
		perKey := func(v int64) float64 { return float64(v) / benchCacheKeys }
		secretObjects := keyObjects - base - (stores - withKeyStore)
		b.ReportMetric(perKey(objects-base-secretObjects), "B/ApiKey")
		b.ReportMetric(perKey(secretObjects), "B/Secret")
		b.ReportMetric(perKey(withKeyStore-objects), "B/ApiKey-store")
		b.ReportMetric(perKey(stores-withKeyStore), "B/Secret-store")
		b.ReportMetric(float64(stores-base)/(1<<20), "MiB-total")
		if len(secretStore.List()) != benchCacheKeys {
			b.Fatal("the Secrets are not all stored")
		}
	}
}

// BenchmarkBundleViewsLiveHeap reports what the ApiKey reconciler keeps of
// the parsed shards of a 100,000-key bundle (bundleViews: one version of
// each of its 64 shards), per key.
func BenchmarkBundleViewsLiveHeap(b *testing.B) {
	const count = 64
	hashKey := make([]byte, hashKeyLength)
	shards := make([]*corev1.Secret, count)
	keys := make([][]bundle.Key, count)
	for i := range benchCacheKeys {
		id := fmt.Sprintf("apk-%020d", i)
		s := bundle.ShardOf(id, count)
		keys[s] = append(keys[s], bundle.Key{Name: fmt.Sprintf("key-%06d", i), KeyID: id,
			Secrets:     []bundle.SecretDigest{{Digest: bundle.Digest(hashKey, fmt.Sprintf("%043d", i)), Version: 1}},
			Permissions: []string{"charges:List", "reports:All"}})
	}
	for s := range count {
		sortKeys(keys[s])
		data, err := json.Marshal(&bundle.Shard{Version: bundle.ShardFormatVersion, Count: count, Index: s, HashKeyID: bundle.HashKeyID(hashKey), Keys: keys[s]})
		if err != nil {
			b.Fatal(err)
		}
		shards[s] = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: bundle.ShardName("bench", count, s), ResourceVersion: "1",
			Labels: map[string]string{bundle.LabelShard: fmt.Sprint(s)}}, Data: map[string][]byte{bundle.SecretDataKey: data}}
	}
	for b.Loop() {
		var views bundleViews
		base := liveHeap()
		for _, s := range shards {
			if views.get(s) == nil {
				b.Fatal("a shard does not parse")
			}
		}
		b.ReportMetric(float64(liveHeap()-base)/benchCacheKeys, "B/key")
		runtime.KeepAlive(&views)
	}
}
