package config

import (
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

// scaleBundle is a sharded bundle of n keys as the operator writes it for a
// policy with maxApiKeys n: the index Secret and the shard Secrets. Every key
// has a random key ID and the same two permissions, like make bench-scale's.
func scaleBundle(tb testing.TB, n int) (*corev1.Secret, []*corev1.Secret, []bundle.Shard) {
	tb.Helper()
	f := bundletest.New("EdDSA")
	f.AddScaleKeys(n, []string{"charges:List", "reports:All"})
	index, docs := f.Sharded("p", bundle.ShardCount(n))
	data, err := json.Marshal(&index)
	if err != nil {
		tb.Fatal(err)
	}
	shards := make([]*corev1.Secret, len(docs))
	for i := range docs {
		shards[i] = shardSecret(tb, index.Shards[i], 1, &docs[i])
	}
	return bundleSecret("1", data), shards, docs
}

func shardSecret(tb testing.TB, name string, rv int, doc *bundle.Shard) *corev1.Secret {
	tb.Helper()
	sd, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: strconv.Itoa(rv)},
		Data: map[string][]byte{bundle.SecretDataKey: sd}}
}

// BenchmarkShardedBundle loads a sharded bundle of BENCH_KEYS keys (default
// 100,000: 64 shards) into a sidecar's store the way the shard watches do,
// and reports the live heap the store keeps for it (the received Secrets
// dropped, as a sidecar that holds nothing else would) and, per op, the cost
// of applying one shard's change (one key disabled, then back).
func BenchmarkShardedBundle(b *testing.B) {
	n := bundletest.ScaleKeys(b)
	base := bundletest.LiveHeap()
	k := &Kubernetes{Store: &Store{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	index, shards, docs := scaleBundle(b, n)
	start := time.Now()
	k.applySecret(index)
	for _, s := range shards {
		k.applyShard(s)
	}
	load := time.Since(start)
	if rt := k.Store.Load(); rt == nil || rt.KeyCount() != n {
		b.Fatalf("the runtime does not hold the %d keys", n)
	}
	// The change: shard 0 without its first key, and back, at increasing
	// resourceVersions.
	doc := docs[0]
	without := doc
	without.Keys = doc.Keys[1:]
	gone := doc.Keys[0].KeyID
	versions := [2][]byte{shardSecret(b, index.Name, 0, &without).Data[bundle.SecretDataKey], shards[0].Data[bundle.SecretDataKey]}
	name := shards[0].Name
	index, shards, docs = nil, nil, nil //nolint:ineffassign,wastedassign // dropped before measuring
	_, _, _ = index, shards, docs
	heap := bundletest.LiveHeap() - base
	bundletest.HeapProfile(b)
	b.ResetTimer()
	for i := range b.N {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: strconv.Itoa(2 + i)},
			Data: map[string][]byte{bundle.SecretDataKey: versions[i%2]}}
		k.applyShard(s)
		if (k.Store.Load().Key(gone) == nil) != (i%2 == 0) {
			b.Fatalf("change %d not applied", i)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(heap)/(1<<20), "live-MiB")
	b.ReportMetric(load.Seconds(), "load-s")
}
