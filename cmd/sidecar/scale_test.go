package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkShardWatches runs a sidecar's Kubernetes source (config.Kubernetes,
// its real API client and watches) against the envtest API server holding a
// sharded bundle of BENCH_KEYS keys (default 100,000: 64 shards), and
// reports the live heap it keeps once every key is in (the shard watches,
// what they hold and the compiled keys) and, per op, the time from a shard's
// write to the sidecar running on it. BENCH_HEAP_PROFILE=<file> writes a
// heap profile at that point.
func BenchmarkShardWatches(b *testing.B) {
	n := 100_000
	if s := os.Getenv("BENCH_KEYS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	ns, pol := "scale-"+strconv.FormatInt(time.Now().UnixNano(), 36), "scale-api"
	_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(b, err)
	_, err = admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: bundle.RevocationsConfigMapName(pol)}}, metav1.CreateOptions{})
	must(b, err)
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Namespace, f.Bundle.Policy.Name = ns, pol
	f.AddScaleKeys(n, []string{"charges:List", "reports:All"})
	index, docs := f.Sharded(pol, bundle.ShardCount(n))
	put := func(name string, v any) {
		data, err := json.Marshal(v)
		must(b, err)
		_, err = admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
			Data: map[string][]byte{bundle.SecretDataKey: data}}, metav1.CreateOptions{})
		must(b, err)
	}
	for i := range docs {
		put(index.Shards[i], &docs[i])
	}
	put(bundle.SecretName(pol), &index)
	// The change: shard 0 without its first key, and back.
	name, first := index.Shards[0], docs[0].Keys[0].KeyID
	with, err := json.Marshal(&docs[0])
	must(b, err)
	docs[0].Keys = docs[0].Keys[1:]
	without, err := json.Marshal(&docs[0])
	must(b, err)
	f, index, docs = nil, bundle.Bundle{}, nil //nolint:ineffassign,wastedassign // dropped before measuring
	_, _, _ = f, index, docs

	base := liveHeap()
	client, err := config.NewCoreClient(env.Config)
	must(b, err)
	store := &config.Store{}
	k := &config.Kubernetes{Client: client, Namespace: ns, Policy: pol, Store: store, Revoked: revocation.NewSet(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = k.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()
	start := time.Now()
	for rt := store.Load(); rt == nil || rt.KeyCount() != n; rt = store.Load() {
		if time.Since(start) > 5*time.Minute {
			b.Fatal("the sidecar did not load the bundle within 5 minutes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	load := time.Since(start)
	heap := liveHeap() - base
	if path := os.Getenv("BENCH_HEAP_PROFILE"); path != "" {
		out, err := os.Create(path)
		must(b, err)
		must(b, pprof.WriteHeapProfile(out))
		must(b, out.Close())
	}
	b.ResetTimer()
	for i := range b.N {
		s, err := admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		must(b, err)
		s.Data[bundle.SecretDataKey] = [][]byte{without, with}[i%2]
		_, err = admin.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
		must(b, err)
		for store.Load().Key(first) == nil != (i%2 == 0) {
			if time.Since(start) > 10*time.Minute {
				b.Fatal("a shard change was not applied")
			}
			time.Sleep(time.Millisecond)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(heap)/(1<<20), "live-MiB")
	b.ReportMetric(load.Seconds(), "load-s")
}
