package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

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

// processRSS runs the sidecar binary (built from this tree, default flags
// apart from its addresses) on the bundle, waits until it logs the n keys,
// makes 2 x BENCH_PROCESS changes of the shard (one key out, back in), and
// reports the process's peak and final RSS.
func processRSS(b *testing.B, ns, pol string, n int, shard string, with, without []byte) {
	ctx := context.Background()
	s, err := admin.CoreV1().Secrets(ns).Get(ctx, shard, metav1.GetOptions{})
	must(b, err)
	s.Data[bundle.SecretDataKey] = with
	_, err = admin.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
	must(b, err)
	dir := b.TempDir()
	bin := filepath.Join(dir, "sidecar")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	user, err := env.AddUser(envtest.User{Name: "bench-admin", Groups: []string{"system:masters"}}, nil)
	must(b, err)
	kc, err := user.KubeConfig()
	must(b, err)
	kcFile := filepath.Join(dir, "kubeconfig")
	must(b, os.WriteFile(kcFile, kc, 0o600))
	cmd := exec.Command(bin, "--policy", pol, "--namespace", ns, "--kubeconfig", kcFile, "--upstream-port", "1",
		"--port", "0", "--admin-port", "0", "--bind-address", "127.0.0.1")
	logs, err := cmd.StderrPipe()
	must(b, err)
	must(b, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	loaded := make(chan int, 1024)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Keys int    `json:"keys"`
			}
			if os.Getenv("BENCH_DEBUG") != "" {
				b.Log(sc.Text())
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "Loaded bundle" {
				loaded <- line.Keys
			}
		}
		close(loaded)
	}()
	wait := func(keys int) {
		deadline := time.After(time.Minute)
		for {
			select {
			case got, ok := <-loaded:
				if !ok {
					b.Fatal("the sidecar ended")
				}
				if got == keys {
					return
				}
			case <-deadline:
				b.Fatalf("the sidecar did not log %d keys", keys)
			}
		}
	}
	wait(n)
	loadHWM := statusMiB(b, cmd.Process.Pid, "VmHWM:")
	changes, err := strconv.Atoi(os.Getenv("BENCH_PROCESS"))
	must(b, err)
	for i := range 2 * changes {
		s, err := admin.CoreV1().Secrets(ns).Get(ctx, shard, metav1.GetOptions{})
		must(b, err)
		s.Data[bundle.SecretDataKey] = [][]byte{without, with}[i%2]
		_, err = admin.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
		must(b, err)
		wait(n - 1 + i%2)
	}
	b.ReportMetric(loadHWM, "load-VmHWM-MiB")
	b.ReportMetric(statusMiB(b, cmd.Process.Pid, "VmHWM:"), "VmHWM-MiB")
	b.ReportMetric(statusMiB(b, cmd.Process.Pid, "VmRSS:"), "VmRSS-MiB")
}

// statusMiB reads a kB field of /proc/<pid>/status in MiB.
func statusMiB(b *testing.B, pid int, field string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(b, err)
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			must(b, err)
			return float64(kb) / 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
