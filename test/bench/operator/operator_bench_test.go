// Package operator benchmarks the keygate operator on a real API server
// (envtest): 1,000 ApiKeys under one TokenPolicy. It prints figures rather
// than asserting timings; run it with `make bench-operator`.
package operator

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers"
)

const (
	numKeys       = 1000
	numSamples    = 50
	createWorkers = 16
	// budget bounds the whole scenario so a regression fails instead of hanging.
	budget     = 5 * time.Minute
	policyName = "bench"
)

var nsCount atomic.Int32

func BenchmarkOperator1000Keys(b *testing.B) {
	ctrl.SetLogger(logr.Discard())
	scheme := runtime.NewScheme()
	must(b, clientgoscheme.AddToScheme(scheme))
	must(b, keygatev1.AddToScheme(scheme))
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	must(b, err)
	b.Cleanup(func() { _ = env.Stop() })
	cfg.QPS, cfg.Burst = -1, 0 // as ctrl.GetConfig: no client-side limit, the API server's fairness decides

	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	must(b, err)
	for b.Loop() {
		runScenario(b, cfg, scheme, c)
	}
}

func runScenario(b *testing.B, cfg *rest.Config, scheme *runtime.Scheme, c client.WithWatch) {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	ns := fmt.Sprintf("bench-%d", nsCount.Add(1))
	must(b, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))

	// The manager, in this process, exactly as cmd/manager wires it.
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  controllers.CacheOptions([]string{ns}),
	})
	must(b, err)
	mgrCtx, stopMgr := context.WithCancel(ctx)
	must(b, controllers.SetupWithManager(mgrCtx, mgr, controllers.Options{}))
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(mgrCtx) }()
	defer func() {
		stopMgr()
		if err := <-mgrDone; err != nil {
			b.Errorf("manager: %v", err)
		}
	}()

	must(b, c.Create(ctx, &keygatev1.TokenPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: policyName},
		Spec:       keygatev1.TokenPolicySpec{Issuer: "https://bench.example.com", Audience: "bench", MaxApiKeys: 2 * numKeys},
	}))
	bundles := watchBundle(ctx, b, c, ns)

	// 1. Create 1,000 ApiKeys; wait until all are Ready and in the bundle.
	start := time.Now()
	names := make(chan string)
	var wg sync.WaitGroup
	for range createWorkers {
		wg.Go(func() {
			for name := range names {
				if err := c.Create(ctx, &keygatev1.ApiKey{
					ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
					Spec: keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: policyName},
						Permissions: []keygatev1.Permission{"charges:List", "reports:All"}},
				}); err != nil {
					b.Errorf("create ApiKey %s: %v", name, err)
				}
			}
		})
	}
	for i := range numKeys {
		names <- fmt.Sprintf("key-%04d", i)
	}
	close(names)
	wg.Wait()
	created := time.Since(start)
	raw := waitBundle(ctx, b, bundles, func(bd []byte) bool { return countKeys(bd) == numKeys })
	bundled := time.Since(start)
	if bd, err := bundle.Parse(raw); err != nil || len(bd.Keys) != numKeys {
		b.Fatalf("bundle of %d keys does not parse: %v", numKeys, err)
	}
	for {
		list := &keygatev1.ApiKeyList{}
		must(b, c.List(ctx, list, client.InNamespace(ns)))
		ready := 0
		for i := range list.Items {
			if meta.IsStatusConditionTrue(list.Items[i].Status.Conditions, keygatev1.ConditionReady) {
				ready++
			}
		}
		if ready == numKeys {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("only %d of %d ApiKeys Ready within %s", ready, numKeys, budget)
		}
		time.Sleep(100 * time.Millisecond) // polling the figure, not synchronising the operator
	}
	allReady := time.Since(start)

	// 2. ApiKey change → bundle latency: change one key's permissions at a
	// time and wait for the bundle Secret's watch to show it.
	latencies := make([]time.Duration, 0, numSamples)
	for i := range numSamples {
		name := fmt.Sprintf("key-%04d", i*(numKeys/numSamples))
		marker := fmt.Sprintf("sample%d:Read", i)
		patch := fmt.Sprintf(`{"spec":{"permissions":["charges:List","reports:All",%q]}}`, marker)
		t0 := time.Now()
		must(b, c.Patch(ctx, &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}},
			client.RawPatch(types.MergePatchType, []byte(patch))))
		waitBundle(ctx, b, bundles, func(bd []byte) bool { return hasPermission(bd, marker) })
		latencies = append(latencies, time.Since(t0))
	}
	slices.Sort(latencies)
	p50, p99 := percentile(latencies, 50), percentile(latencies, 99)
	rss := peakRSSMiB(b)
	if os.Getenv("BENCH_DEBUG") != "" {
		mfs, _ := metrics.Registry.Gather()
		for _, mf := range mfs {
			if n := mf.GetName(); n == "controller_runtime_reconcile_total" || n == "controller_runtime_reconcile_time_seconds" || n == "rest_client_requests_total" {
				for _, m := range mf.GetMetric() {
					fmt.Println(n, m.GetLabel(), m.GetCounter().GetValue(), m.GetHistogram().GetSampleSum(), m.GetHistogram().GetSampleCount())
				}
			}
		}
	}

	b.ReportMetric(bundled.Seconds(), "s/1000-bundled")
	b.ReportMetric(allReady.Seconds(), "s/1000-ready")
	b.ReportMetric(float64(p50.Milliseconds()), "ms-p50-change→bundle")
	b.ReportMetric(float64(p99.Milliseconds()), "ms-p99-change→bundle")
	b.ReportMetric(rss, "MiB-peak-RSS")
	fmt.Printf("keygate operator, %d ApiKeys under one TokenPolicy (envtest, GOMAXPROCS=%d):\n", numKeys, runtimeProcs())
	fmt.Printf("  ApiKeys created by the client in  %v\n", created.Round(time.Millisecond))
	fmt.Printf("  all %d in the bundle after         %v (target ≤ 30s)\n", numKeys, bundled.Round(time.Millisecond))
	fmt.Printf("  all %d Ready after                 %v (target ≤ 30s)\n", numKeys, allReady.Round(time.Millisecond))
	fmt.Printf("  ApiKey change → bundle, %d samples: p50 %v, p99 %v (target p99 ≤ 1s)\n", numSamples, p50.Round(time.Millisecond), p99.Round(time.Millisecond))
	fmt.Printf("  bundle Secret size with %d keys: %d KiB\n", numKeys, len(raw)/1024)
	fmt.Printf("  peak RSS of the process (manager + benchmark client, VmHWM): %.1f MiB (target ≤ 150 MiB)\n", rss)
}

// watchBundle streams the bundle document each time the bundle Secret
// changes. Checks on it are byte searches, so that the benchmark's own CPU
// use stays small next to the operator's.
func watchBundle(ctx context.Context, b *testing.B, c client.WithWatch, ns string) <-chan []byte {
	w, err := c.Watch(ctx, &corev1.SecretList{}, client.InNamespace(ns),
		client.MatchingFields{"metadata.name": bundle.SecretName(policyName)})
	must(b, err)
	out := make(chan []byte, 1)
	go func() {
		defer w.Stop()
		defer close(out)
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			s, ok := ev.Object.(*corev1.Secret)
			if !ok {
				continue
			}
			bd := s.Data[bundle.SecretDataKey]
			select {
			case <-out: // keep only the newest
			default:
			}
			out <- bd
		}
	}()
	return out
}

// waitBundle consumes bundle versions until one satisfies ok.
func waitBundle(ctx context.Context, b *testing.B, bundles <-chan []byte, ok func([]byte) bool) []byte {
	for bd := range bundles {
		if ok(bd) {
			return bd
		}
	}
	b.Fatalf("bundle watch ended before the bundle was as expected: %v", ctx.Err())
	return nil
}

func hasPermission(bd []byte, perm string) bool { return bytes.Contains(bd, []byte(`"`+perm+`"`)) }

func countKeys(bd []byte) int { return bytes.Count(bd, []byte(`"keyID":`)) }

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

// peakRSSMiB reads VmHWM, the process's peak resident set.
func peakRSSMiB(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/self/status")
	must(b, err)
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%f kB", &kb); err == nil {
				return kb / 1024
			}
		}
	}
	b.Fatal("VmHWM not found in /proc/self/status")
	return 0
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

func runtimeProcs() int { return goruntime.GOMAXPROCS(0) }
