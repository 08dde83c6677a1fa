package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

// BenchmarkShardWatches runs a sidecar's Kubernetes source (config.Kubernetes,
// its real API client and watches) against the envtest API server holding a
// sharded bundle of BENCH_KEYS keys (default 100,000: 64 shards), and
// reports the live heap it keeps once every key is in (the shard watches,
// what they hold and the compiled keys) and, per op, the time from a shard's
// write to the sidecar running on it. BENCH_HEAP_PROFILE=<file> writes a
// heap profile at that point.
func BenchmarkShardWatches(b *testing.B) {
	n := bundletest.ScaleKeys(b)
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

	base := bundletest.LiveHeap()
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
	heap := bundletest.LiveHeap() - base
	bundletest.HeapProfile(b)
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
	if os.Getenv("BENCH_PROCESS") != "" {
		stop()
		<-done
		processRSS(b, ns, pol, n, name, with, without)
	}
}

// processRSS runs the sidecar binary (default flags apart from its
// addresses) on the bundle, waits until it logs the n keys, makes 2 x
// BENCH_PROCESS changes of the shard (one key out, back in), and reports the
// process's peak and final RSS.
func processRSS(b *testing.B, ns, pol string, n int, shard string, with, without []byte) {
	ctx := context.Background()
	s, err := admin.CoreV1().Secrets(ns).Get(ctx, shard, metav1.GetOptions{})
	must(b, err)
	s.Data[bundle.SecretDataKey] = with
	_, err = admin.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
	must(b, err)
	p := startSidecar(b, ns, pol)
	p.waitKeys(b, n, time.Minute)
	loadHWM := p.statusMiB(b, "VmHWM:")
	changes, err := strconv.Atoi(os.Getenv("BENCH_PROCESS"))
	must(b, err)
	for i := range 2 * changes {
		s, err := admin.CoreV1().Secrets(ns).Get(ctx, shard, metav1.GetOptions{})
		must(b, err)
		s.Data[bundle.SecretDataKey] = [][]byte{without, with}[i%2]
		_, err = admin.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
		must(b, err)
		p.waitKeys(b, n-1+i%2, time.Minute)
	}
	b.ReportMetric(loadHWM, "load-VmHWM-MiB")
	b.ReportMetric(p.statusMiB(b, "VmHWM:"), "VmHWM-MiB")
	b.ReportMetric(p.statusMiB(b, "VmRSS:"), "VmRSS-MiB")
}

// BenchmarkShardBulk is a bulk creation as make bench-scale's reaches the
// sidecar binary (its production defaults, no container limit): a policy of
// BENCH_KEYS keys (default 100,000: 64 shards) whose keys arrive in
// BENCH_BULK_STEPS steps (default 50), each rewriting every shard with the
// keys added so far, 8 shards at a time as the operator writes them (bench-scale
// at 100,000 keys wrote some 3,400 shards). Each step waits until the
// sidecar logs the step's keys, as the operator's pacing of additions lets it.
// It reports the process's peak RSS (VmHWM), its RSS at the end, the
// seconds from the first write to all keys loaded and the CPU seconds the
// sidecar used.
func BenchmarkShardBulk(b *testing.B) {
	n := bundletest.ScaleKeys(b)
	steps := 50
	if v := os.Getenv("BENCH_BULK_STEPS"); v != "" {
		var err error
		steps, err = strconv.Atoi(v)
		must(b, err)
	}
	ctx := context.Background()
	for range b.N {
		ns, pol := "bulk-"+strconv.FormatInt(time.Now().UnixNano(), 36), "bulk-api"
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		must(b, err)
		_, err = admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: bundle.RevocationsConfigMapName(pol)}}, metav1.CreateOptions{})
		must(b, err)
		f := bundletest.New(bundle.AlgEdDSA)
		f.Bundle.Policy.Namespace, f.Bundle.Policy.Name = ns, pol
		f.AddScaleKeys(n, []string{"charges:List", "reports:All"})
		order := make(map[string]int, n) // a key's place in the order of arrival
		for i, k := range f.Bundle.Keys {
			order[k.KeyID] = i
		}
		index, full := f.Sharded(pol, bundle.ShardCount(n))
		shards := make([]*corev1.Secret, len(full))
		// write puts the keys of shard i that arrived before upTo in its
		// Secret; writeAll does so for every shard, 8 at a time.
		write := func(i, upTo int) error {
			doc := full[i]
			doc.Keys = slices.DeleteFunc(slices.Clone(doc.Keys), func(k bundle.Key) bool { return order[k.KeyID] >= upTo })
			data, err := json.Marshal(&doc)
			if err != nil {
				return err
			}
			if shards[i] == nil {
				shards[i], err = admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: index.Shards[i]},
					Data: map[string][]byte{bundle.SecretDataKey: data}}, metav1.CreateOptions{})
				return err
			}
			shards[i].Data[bundle.SecretDataKey] = data
			shards[i], err = admin.CoreV1().Secrets(ns).Update(ctx, shards[i], metav1.UpdateOptions{})
			return err
		}
		writeAll := func(upTo int) {
			errs := make([]error, len(shards))
			slots := make(chan struct{}, 8)
			var wg sync.WaitGroup
			for i := range shards {
				slots <- struct{}{}
				wg.Go(func() { errs[i] = write(i, upTo); <-slots })
			}
			wg.Wait()
			must(b, errors.Join(errs...))
		}
		writeAll(0)
		data, err := json.Marshal(&index)
		must(b, err)
		_, err = admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: bundle.SecretName(pol)},
			Data: map[string][]byte{bundle.SecretDataKey: data}}, metav1.CreateOptions{})
		must(b, err)
		profDir := os.Getenv("BENCH_PROFILE")
		var extra []string
		if profDir != "" {
			extra = append(extra, "--enable-pprof")
		}
		p := startSidecar(b, ns, pol, extra...)
		adminAddr := <-p.admin
		p.waitKeys(b, 0, time.Minute)
		start := time.Now()
		for s := 1; s <= steps; s++ {
			upTo := n * s / steps
			stop := make(chan struct{})
			var profiled sync.WaitGroup
			if profDir != "" && s > steps*9/10 {
				profiled.Go(func() { heapProfiles(b, adminAddr, profDir, s, stop) })
			}
			writeAll(upTo)
			p.waitKeys(b, upTo, 2*time.Minute)
			close(stop)
			profiled.Wait()
		}
		b.ReportMetric(time.Since(start).Seconds(), "bulk-s")
		b.ReportMetric(p.cpuSeconds(b), "sidecar-cpu-s")
		if profDir != "" {
			resp, err := http.Get("http://" + adminAddr + "/debug/pprof/heap?debug=1") //nolint:noctx // bounded by the benchmark
			must(b, err)
			data, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			must(b, err)
			must(b, os.WriteFile(filepath.Join(profDir, "bulk-memstats.txt"), data, 0o600))
		}
		b.ReportMetric(p.statusMiB(b, "VmHWM:"), "VmHWM-MiB")
		b.ReportMetric(p.statusMiB(b, "VmRSS:"), "VmRSS-MiB")
		must(b, admin.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}))
	}
}

// heapProfiles saves the sidecar's heap profile (as of its last collection)
// every 250 ms into dir until stop is closed (BenchmarkShardBulk with
// BENCH_PROFILE=<dir>).
func heapProfiles(b *testing.B, admin, dir string, step int, stop chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(250 * time.Millisecond):
		}
		resp, err := http.Get("http://" + admin + "/debug/pprof/heap") //nolint:noctx // bounded by the benchmark
		if err != nil {
			b.Error(err)
			return
		}
		data, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("bulk-heap-%02d-%02d.pprof", step, i)), data, 0o600)
		}
		if err != nil {
			b.Error(err)
			return
		}
	}
}
