// Package scale benchmarks keygate at scale, black-box, as users run it: the
// manager and a sidecar as their own processes (built from cmd/, default
// flags, so the production client configuration) against a real API server
// and etcd (envtest), next to that API server's own write ceiling measured in
// the same run. It prints figures and asserts only counts; run it with
// `make bench-scale` (BENCH_SCALE_N=1000,10000 by default).
package scale

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

const (
	// createWorkers is the client's concurrency, for the ceiling and the operator alike.
	createWorkers = 16
	// numSamples is the change → sidecar samples at each N: with 100, the
	// p99 is the second slowest (of 20 it was the slowest, so one transient
	// decided it); every sample is printed, the slowest too.
	numSamples = 100
	policyName = "bench"
)

// result is one row of the table.
type result struct {
	n                      int
	ceiling                time.Duration // 2n creates (n Secrets, n ApiKeys), no manager
	ready, inSidecar       time.Duration
	readyKeys, tooLarge    int
	p50, p99, slowest      time.Duration
	managerRSS, sidecarRSS float64
	etcdMiB                float64
	samples                int
	settled                bool
	restart                string // the restart phase's line
	failover               string // the failover phase's line
}

func BenchmarkScale(b *testing.B) {
	ctrl.SetLogger(logr.Discard())
	sizes := []int{1000, 10000}
	if v := os.Getenv("BENCH_SCALE_N"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			must(b, err)
			sizes = append(sizes, n)
		}
	}
	scheme, root, env, cfg := startAPIServer(b)
	dir := b.TempDir()
	user, err := env.AddUser(envtest.User{Name: "bench", Groups: []string{"system:masters"}}, nil)
	must(b, err)
	kc, err := user.KubeConfig()
	must(b, err)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	must(b, os.WriteFile(kubeconfig, kc, 0o600))
	bins := buildBinaries(b, root, dir)

	// The benchmark's own client is unthrottled so that it never is the bottleneck.
	cfg.QPS, cfg.Burst = -1, 0
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	must(b, err)
	etcdURL := env.ControlPlane.Etcd.URL.String()
	cs, err := kubernetes.NewForConfig(cfg)
	must(b, err)
	debug := func(string) {}
	if os.Getenv("BENCH_DEBUG") != "" {
		var last map[string]float64
		debug = func(phase string) {
			cur := apiRequests(b, cs.Discovery().RESTClient())
			var lines []string
			for k, v := range cur {
				if d := v - last[k]; d >= 10 && last != nil {
					lines = append(lines, fmt.Sprintf("    %-40s %6.0f", k, d))
				}
			}
			slices.Sort(lines)
			if last != nil && phase != "" {
				fmt.Printf("  API requests during %s:\n%s\n", phase, strings.Join(lines, "\n"))
			}
			last = cur
		}
	}

	apiURL, err := url.Parse(cfg.Host)
	must(b, err)
	cpu := cpuMeter{"API server": pidWithArg("--secure-port=" + apiURL.Port()), "etcd": pidWithArg(etcdURL), "benchmark": os.Getpid()}

	var rows []result
	for b.Loop() {
		rows = rows[:0]
		for _, n := range sizes {
			r := result{n: n}
			debug("")
			if os.Getenv("BENCH_CEILING") != "0" {
				before := cpu.read()
				r.ceiling = measureCeiling(b, c, n)
				fmt.Printf("  N=%d: the ceiling took %v; CPU used: %s\n", n, r.ceiling.Round(10*time.Millisecond), cpu.since(before))
				debug(fmt.Sprintf("the ceiling, N=%d", n))
			}
			measureOperator(b, c, cfg, cs.Discovery().RESTClient(), bins, kubeconfig, cpu, &r)
			debug(fmt.Sprintf("the operator, N=%d (includes the benchmark's own creates, lists and %d disables, and the restart)", n, numSamples))
			r.etcdMiB = etcdSizeMiB(b, etcdURL)
			rows = append(rows, r)
		}
	}
	printTable(rows)
}

// buildBinaries builds cmd/manager and cmd/sidecar into dir.
// startAPIServer starts envtest's API server and etcd with keygate's CRDs
// (stopped when b ends) and returns the scheme, the repository root, the
// environment and its admin config.
func startAPIServer(b *testing.B) (*runtime.Scheme, string, *envtest.Environment, *rest.Config) {
	scheme := runtime.NewScheme()
	must(b, clientgoscheme.AddToScheme(scheme))
	must(b, keygatev1.AddToScheme(scheme))
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	must(b, err)
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join(root, "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	must(b, err)
	b.Cleanup(func() { _ = env.Stop() })
	return scheme, root, env, cfg
}

func buildBinaries(b *testing.B, root, dir string) map[string]string {
	out := map[string]string{}
	for _, name := range []string{"manager", "sidecar"} {
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("build %s: %v\n%s", name, err, msg)
		}
		out[name] = bin
	}
	return out
}

// createAll runs create for 0..n-1 on createWorkers goroutines.
func createAll(ctx context.Context, b *testing.B, n int, create func(context.Context, int) error) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range createWorkers {
		wg.Go(func() {
			for i := range next {
				if err := create(ctx, i); err != nil {
					b.Errorf("create %d: %v", i, err)
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func newKey(ns string, i int) *keygatev1.ApiKey {
	return &keygatev1.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("key-%06d", i)},
		Spec: keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: policyName},
			Permissions: []keygatev1.Permission{"charges:List", "reports:All"}},
	}
}

// measureCeiling is the API server's own pace for the writes a new key
// needs: n Secrets and n ApiKeys created with the same concurrency, no manager.
func measureCeiling(b *testing.B, c client.Client, n int) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), budget(n))
	defer cancel()
	ns := fmt.Sprintf("ceiling-%d", n)
	must(b, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	start := time.Now()
	createAll(ctx, b, n, func(ctx context.Context, i int) error {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("key-%06d-credentials", i),
			Labels: map[string]string{keygatev1.LabelManagedBy: "bench"}},
			StringData: map[string]string{"key": fmt.Sprintf("apk-%020d", i), "secret": strings.Repeat("x", 43)}}
		if err := c.Create(ctx, s); err != nil {
			return err
		}
		return c.Create(ctx, newKey(ns, i))
	})
	return time.Since(start)
}

// sampleBudget bounds the change → sidecar samples of one size.
const sampleBudget = 3 * time.Minute

// budget bounds one size's scenario so a regression fails instead of hanging.
func budget(n int) time.Duration { return 2*time.Minute + time.Duration(n)*30*time.Millisecond }

func measureOperator(b *testing.B, c client.Client, cfg *rest.Config, apiServer rest.Interface, bins map[string]string, kubeconfig string, cpu cpuMeter, r *result) {
	ctx, cancel := context.WithTimeout(context.Background(), budget(r.n))
	defer cancel()
	ns := fmt.Sprintf("operator-%d", r.n)
	must(b, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	args := []string{"--kubeconfig", kubeconfig, "--enable-injection=false",
		"--metrics-bind-address=0", "--health-probe-bind-address=0", "--watch-namespaces", ns}
	// BENCH_MANAGER_ARGS adds flags, for experiments (such as --kube-api-qps);
	// the figures of record use none.
	profDir := os.Getenv("BENCH_PROFILE")
	if profDir != "" {
		if err := os.MkdirAll(profDir, 0o755); err != nil {
			b.Fatalf("BENCH_PROFILE: %v", err)
		}
		args = append(args, "--pprof-bind-address=127.0.0.1:0", "--metrics-bind-address=127.0.0.1:0")
	}
	// BENCH_TRACE=1 has the manager log each TokenPolicy pass (V(1), "Bundle
	// pass") and its GC cycles (gctrace), printed next to the change →
	// sidecar sample they concern.
	trace := os.Getenv("BENCH_TRACE") != ""
	if trace {
		args = append(args, "--zap-log-level=1")
	}
	args = append(args, strings.Fields(os.Getenv("BENCH_MANAGER_ARGS"))...)
	var env []string
	if trace {
		env = []string{"GODEBUG=gctrace=1"}
	}
	mgr := startProcessEnv(b, env, "manager", bins["manager"], args...)
	defer func() { mgr.stop(b) }() // the restarted one, after a restart
	var mgrPprof, mgrMetrics string
	if profDir != "" {
		mgrPprof = "http://" + mgr.waitLog(ctx, b, "pprof server", serverLog("pprof"))["addr"].(string)
		mgrMetrics = "http://" + mgr.waitLog(ctx, b, "metrics server", serverLog("metrics"))["addr"].(string)
	}
	must(b, c.Create(ctx, &keygatev1.TokenPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: policyName},
		Spec:       keygatev1.TokenPolicySpec{Issuer: "https://bench.example.com", Audience: "bench", MaxApiKeys: int32(r.n)}, //nolint:gosec // n ≤ the CRD's cap
	}))
	sc := startProcess(b, "sidecar", bins["sidecar"], "--policy", policyName, "--namespace", ns, "--kubeconfig", kubeconfig,
		"--upstream-port", "9", "--port", "0", "--admin-port", "0", "--bind-address", "127.0.0.1",
		"--failure-limit", "1000000", "--log-level", "info", fmt.Sprintf("--enable-pprof=%t", profDir != ""))
	defer sc.stop(b)
	started := sc.waitLog(ctx, b, "start", func(l map[string]any) bool { return l["msg"] == "Started sidecar" })
	base := "http://" + started["listen"].(string)

	cpu = maps.Clone(cpu)
	cpu["manager"], cpu["sidecar"] = mgr.cmd.Process.Pid, sc.cmd.Process.Pid
	cpuBefore := cpu.read()
	start := time.Now()
	var profiled sync.WaitGroup
	if profDir != "" {
		profiled.Go(func() {
			fetch(b, mgrPprof+"/debug/pprof/profile?seconds="+profileSeconds(), filepath.Join(profDir, fmt.Sprintf("manager-cpu-%d.pprof", r.n)))
		})
		profiled.Go(func() {
			raw, err := apiServer.Get().AbsPath("/debug/pprof/profile").Param("seconds", profileSeconds()).DoRaw(context.Background())
			if err == nil {
				err = os.WriteFile(filepath.Join(profDir, fmt.Sprintf("apiserver-cpu-%d.pprof", r.n)), raw, 0o600)
			}
			if err != nil {
				b.Errorf("API server profile: %v", err)
			}
		})
	}
	peakCtx, stopPeak := context.WithCancel(ctx)
	var peakDone sync.WaitGroup
	if profDir != "" {
		peakDone.Go(func() {
			profilePeakHeap(peakCtx, b, mgr, mgrPprof, filepath.Join(profDir, fmt.Sprintf("manager-heap-peak-%d.pprof", r.n)), 10*time.Second)
		})
	}
	createAll(ctx, b, r.n, func(ctx context.Context, i int) error { return c.Create(ctx, newKey(ns, i)) })
	fmt.Printf("  N=%d: the benchmark created the ApiKeys in %v\n", r.n, time.Since(start).Round(10*time.Millisecond))
	r.readyKeys, r.tooLarge, r.settled = waitSettled(ctx, b, cfg, c.Scheme(), ns, r.n)
	r.ready = time.Since(start)
	fmt.Printf("  N=%d: CPU used from the first create to all settled: %s\n", r.n, cpu.since(cpuBefore))
	stopPeak()
	peakDone.Wait()
	if profDir != "" {
		for msg, count := range mgr.errorSummary() {
			fmt.Printf("  manager error (%d×): %.300s\n", count, msg)
		}
		printManagerMetrics(b, mgrMetrics, r.n)
		fetch(b, "http://"+started["admin"].(string)+"/debug/pprof/heap?gc=1", filepath.Join(profDir, fmt.Sprintf("sidecar-heap-%d.pprof", r.n)))
		fetch(b, mgrPprof+"/debug/pprof/heap?gc=1", filepath.Join(profDir, fmt.Sprintf("manager-heap-%d.pprof", r.n)))
		profiled.Wait()
	}
	if !r.settled {
		r.managerRSS, r.sidecarRSS = mgr.peakRSSMiB(b), sc.peakRSSMiB(b)
		return
	}
	loaded := sc.waitLog(ctx, b, fmt.Sprintf("bundle of %d keys", r.readyKeys), func(l map[string]any) bool {
		k, ok := l["keys"].(float64)
		return l["msg"] == "Loaded bundle" && ok && int(k) == r.readyKeys
	})
	r.inSidecar = loaded[arrivedAt].(time.Time).Sub(start)
	fmt.Printf("  N=%d: %d Ready and %d BundleTooLarge after %v, in the sidecar after %v\n",
		r.n, r.readyKeys, r.tooLarge, r.ready.Round(10*time.Millisecond), r.inSidecar.Round(10*time.Millisecond))

	// change → sidecar: disable one Ready key at a time and time until the
	// sidecar refuses its secret. The samples have a budget of their own, so
	// that a slow settling does not leave them too little time and report a
	// budget as a disabled key that keeps working.
	ctx, cancel = context.WithTimeout(context.Background(), sampleBudget)
	defer cancel()
	var lat []time.Duration
	shardWrites := watchShardWrites(ctx, b, cfg, ns)
	var toShard, fromShard []time.Duration // change → shard written, shard written → refused
	var timelines []sampleTimeline
	for i := 0; i < r.n && len(lat) < numSamples; i += max(r.n/numSamples, 1) {
		key := &keygatev1.ApiKey{}
		must(b, c.Get(ctx, types.NamespacedName{Namespace: ns, Name: fmt.Sprintf("key-%06d", i)}, key))
		if !meta.IsStatusConditionTrue(key.Status.Conditions, keygatev1.ConditionReady) {
			continue
		}
		s := &corev1.Secret{}
		must(b, c.Get(ctx, types.NamespacedName{Namespace: ns, Name: key.Status.SecretName}, s))
		user, pass := string(s.Data["key"]), string(s.Data["secret"])
		if code := authTest(base, user, pass); code != http.StatusOK {
			b.Fatalf("Ready key %s: sidecar answers %d, want 200", key.Name, code)
		}
		cpuAt := cpu.read()
		t0 := time.Now()
		must(b, c.Patch(ctx, key, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"disabled":true}}`))))
		patched := time.Now()
		code := authTest(base, user, pass)
		for code != http.StatusUnauthorized && ctx.Err() == nil {
			time.Sleep(2 * time.Millisecond) // sampling resolution, not synchronisation
			code = authTest(base, user, pass)
		}
		if ctx.Err() != nil {
			b.Errorf("N=%d: disabled key %s: the sidecar still answered %d (want 401) %v later, when the sample budget ran out",
				r.n, key.Name, code, time.Since(t0).Round(time.Millisecond))
			break
		}
		refused := time.Now()
		lat = append(lat, refused.Sub(t0))
		line := fmt.Sprintf("  N=%d: sample %2d (%s): disable PATCH returned +%v", r.n, len(lat), key.Name, ms(patched.Sub(t0)))
		if count := bundle.ShardCount(r.n); count > 0 {
			if at, ok := shardWrites.firstAfter(bundle.ShardName(policyName, count, bundle.ShardOf(user, count)), t0); ok && !at.After(refused) {
				toShard, fromShard = append(toShard, at.Sub(t0)), append(fromShard, refused.Sub(at))
				line += fmt.Sprintf(", shard written +%v", ms(at.Sub(t0)))
			}
		}
		line += fmt.Sprintf(", sidecar refuses +%v; CPU meanwhile: %s", ms(refused.Sub(t0)), cpu.since(cpuAt))
		timelines = append(timelines, sampleTimeline{line: line, from: t0, to: refused})
	}
	// Printed once all samples are taken: a pass logs when it ends, after
	// its status write, which may be after the sidecar refused the key.
	for _, tl := range timelines {
		fmt.Println(tl.line)
		if trace {
			printPasses(mgr, tl.from, tl.to)
		}
	}
	slices.Sort(lat)
	r.samples = len(lat)
	r.p50, r.p99, r.slowest = percentile(lat, 50), percentile(lat, 99), percentile(lat, 100)
	if len(toShard) > 0 {
		slices.Sort(toShard)
		slices.Sort(fromShard)
		fmt.Printf("  N=%d: of change→sidecar (%d samples), change→its shard written (seen by the benchmark's watch) p50 %v / p99 %v / slowest %v, "+
			"then →sidecar refuses p50 %v / p99 %v / slowest %v\n", r.n, len(toShard),
			ms(percentile(toShard, 50)), ms(percentile(toShard, 99)), ms(percentile(toShard, 100)),
			ms(percentile(fromShard, 50)), ms(percentile(fromShard, 99)), ms(percentile(fromShard, 100)))
	}
	r.managerRSS, r.sidecarRSS = mgr.peakRSSMiB(b), sc.peakRSSMiB(b)
	cancel() // the samples' shard watch
	if b.Failed() {
		return
	}
	// The restarted manager is leader-elected, as the chart runs it, so that
	// it is the leader the failover's standby takes over from.
	rs := restartScenario{c: c, cfg: cfg, apiServer: apiServer, cpu: cpu, sidecar: sc, base: base, ns: ns, n: r.n,
		bin: bins["manager"], env: env, args: append(slices.Clone(args), "--leader-elect", "--leader-election-namespace", ns),
		trace: trace, profDir: profDir}
	mgr, r.restart = rs.run(b, mgr)
	if b.Failed() || r.restart == "" {
		return
	}
	mgr, r.failover = rs.failover(b, mgr)
}

// shardWriteTimes records when a watch saw each Secret written.
type shardWriteTimes struct {
	mu          sync.Mutex
	at          map[string][]time.Time
	credentials map[string]bool // the names of credentials Secrets
}

// firstAfter is the first time Secret name was seen written after t.
func (s *shardWriteTimes) firstAfter(name string, t time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, at := range s.at[name] {
		if at.After(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// countSince is the number of writes seen after t: of credentials Secrets,
// and of other Secrets (the bundle's).
func (s *shardWriteTimes) countSince(t time.Time) (credentials, others int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, times := range s.at {
		for _, at := range times {
			switch {
			case !at.After(t):
			case s.credentials[name]:
				credentials++
			default:
				others++
			}
		}
	}
	return credentials, others
}

// watchShardWrites watches the bundle shards of namespace ns from now on
// (until ctx ends), to split a change's way to the sidecar into the
// operator's part and the sidecar's.
func watchShardWrites(ctx context.Context, b *testing.B, cfg *rest.Config, ns string) *shardWriteTimes {
	return watchSecretWrites(ctx, b, cfg, ns, bundle.LabelShard)
}

// watchSecretWrites watches the Secrets of namespace ns that selector
// matches, from now on (until ctx ends).
func watchSecretWrites(ctx context.Context, b *testing.B, cfg *rest.Config, ns, selector string) *shardWriteTimes {
	cs, err := kubernetes.NewForConfig(cfg)
	must(b, err)
	// One item is enough for the list's resourceVersion, whatever the count.
	sel := metav1.ListOptions{LabelSelector: selector, Limit: 1}
	list, err := cs.CoreV1().Secrets(ns).List(ctx, sel)
	must(b, err)
	sel.ResourceVersion, sel.Limit = list.ResourceVersion, 0
	w, err := cs.CoreV1().Secrets(ns).Watch(ctx, sel)
	must(b, err)
	out := &shardWriteTimes{at: map[string][]time.Time{}, credentials: map[string]bool{}}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			if s, ok := ev.Object.(*corev1.Secret); ok {
				out.mu.Lock()
				out.at[s.Name] = append(out.at[s.Name], time.Now())
				if s.Labels[keygatev1.LabelApiKey] != "" {
					out.credentials[s.Name] = true
				}
				out.mu.Unlock()
			}
		}
	}()
	return out
}

// waitSettled waits until every key is Ready or left out of a full bundle,
// and returns both counts; settled is false when the budget ran out first
// (the counts are then those seen last). It watches the ApiKeys (an
// informer) rather than listing them again and again: 10,000 keys listed
// every 200 ms cost the API server some 8% of its CPU in the operator phase,
// taken from the operator being measured.
func waitSettled(ctx context.Context, b *testing.B, cfg *rest.Config, scheme *runtime.Scheme, ns string, n int) (ready, tooLarge int, settled bool) {
	var mu sync.Mutex
	states := map[string]string{} // name → "ready", "tooLarge" or ""
	record := func(o any) {
		if k, ok := o.(*keygatev1.ApiKey); ok {
			state := ""
			switch cond := meta.FindStatusCondition(k.Status.Conditions, keygatev1.ConditionReady); {
			case cond == nil:
			case cond.Status == metav1.ConditionTrue:
				state = "ready"
			case cond.Reason == keygatev1.ReasonBundleTooLarge:
				state = "tooLarge"
			}
			mu.Lock()
			states[k.Name] = state
			mu.Unlock()
		}
	}
	informers, err := cache.New(cfg, cache.Options{Scheme: scheme, DefaultNamespaces: map[string]cache.Config{ns: {}},
		DefaultTransform: cache.TransformStripManagedFields()})
	must(b, err)
	inf, err := informers.GetInformer(ctx, &keygatev1.ApiKey{})
	must(b, err)
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { record(o) },
		UpdateFunc: func(_, o any) { record(o) },
	})
	must(b, err)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = informers.Start(ctx) }()
	informers.WaitForCacheSync(ctx)
	for {
		mu.Lock()
		ready, tooLarge = 0, 0
		for _, st := range states {
			switch st {
			case "ready":
				ready++
			case "tooLarge":
				tooLarge++
			}
		}
		mu.Unlock()
		if ready+tooLarge == n {
			return ready, tooLarge, true
		}
		select {
		case <-ctx.Done():
			return ready, tooLarge, false
		case <-time.After(50 * time.Millisecond): // reading the counts, not synchronising the operator
		}
	}
}

func authTest(base, user, pass string) int {
	req, _ := http.NewRequest(http.MethodGet, base+"/api/auth/test", nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// ms rounds d to the millisecond.
func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// sampleTimeline is one change → sidecar sample: its line, and when it
// started (the disable sent) and ended (the sidecar refused the key).
type sampleTimeline struct {
	line     string
	from, to time.Time
}

// printPasses prints the manager's TokenPolicy passes (BENCH_TRACE=1) that
// ran between from and to, each as when it started and ended relative to
// from, and what it did.
func printPasses(mgr *process, from, to time.Time) {
	mgr.mu.Lock()
	defer mgr.mu.Unlock()
	for _, l := range mgr.lines {
		end := l[arrivedAt].(time.Time)
		if l["msg"] == "Wrote bundle Secret" && !end.Before(from) && !end.After(to) {
			fmt.Printf("      %v written (update returned) +%v\n", l["secret"], ms(end.Sub(from)))
		}
		inWindow := !end.Before(from) && !end.After(to)
		if l["msg"] == "gc" && inWindow {
			fmt.Printf("      +%v %v\n", ms(end.Sub(from)), l["text"])
		}
		// Anything else the manager logged at info or error level meanwhile
		// (lost contact with the API server, a watch that ended, a failure).
		// Conflicts are logged at V(1), with the error and "retried".
		if (l["level"] == "info" || l["level"] == "error" || l["retried"] == true) && inWindow {
			fmt.Printf("      +%v manager %v: %v %.200v\n", ms(end.Sub(from)), l["level"], l["msg"], l["error"])
		}
		if l["msg"] != "Bundle pass" {
			continue
		}
		took, _ := l["took"].(float64)
		start := end.Add(-time.Duration(took * float64(time.Second)))
		if end.Before(from) || start.After(to) {
			continue
		}
		waited, _ := l["waited"].(float64)
		read, _ := l["read"].(float64)
		kind := fmt.Sprint(l["kind"])
		if why, ok := l["why"]; ok {
			kind += fmt.Sprintf(" (%v)", why)
		}
		fmt.Printf("      pass %+v → %+v: %s, changed %v (oldest noted at %+v), read %v, shards encoded %v written %v paced %v%s\n",
			ms(start.Sub(from)), ms(end.Sub(from)), kind, l["changed"], ms(start.Add(-time.Duration(waited*float64(time.Second))).Sub(from)),
			ms(time.Duration(read*float64(time.Second))), l["encoded"], l["written"], l["paced"], failed(l))
	}
}

func failed(l map[string]any) string {
	if f, ok := l["failed"]; ok {
		return fmt.Sprintf(", failed: %v", f)
	}
	return ""
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func printTable(rows []result) {
	flags := "default flags"
	if args := os.Getenv("BENCH_MANAGER_ARGS"); args != "" {
		flags += "; manager " + args
	}
	fmt.Printf("keygate at scale: manager and sidecar as processes (%s), envtest API server + etcd\n", flags)
	fmt.Println("| N | API ceiling (N Secrets + N ApiKeys) | operator: all settled | Ready / BundleTooLarge | in the sidecar | (all Ready and in the sidecar) / ceiling | change→sidecar p50 / p99 / slowest (samples) | manager VmHWM | sidecar VmHWM | etcd db |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		if !r.settled {
			fmt.Printf("| %d | %v | not settled within the budget (%v) | %d / %d so far | – | – | – | %.0f MiB | %.0f MiB | %.0f MiB |\n",
				r.n, r.ceiling.Round(10*time.Millisecond), r.ready.Round(time.Second), r.readyKeys, r.tooLarge, r.managerRSS, r.sidecarRSS, r.etcdMiB)
			continue
		}
		ratio := "– (BENCH_CEILING=0)"
		if r.ceiling > 0 {
			ratio = fmt.Sprintf("%.1f×", max(r.ready, r.inSidecar).Seconds()/r.ceiling.Seconds())
		}
		fmt.Printf("| %d | %v | %v | %d / %d | %v | %s | %v / %v / %v (%d) | %.0f MiB | %.0f MiB | %.0f MiB |\n",
			r.n, r.ceiling.Round(10*time.Millisecond), r.ready.Round(10*time.Millisecond), r.readyKeys, r.tooLarge,
			r.inSidecar.Round(10*time.Millisecond), ratio,
			r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.slowest.Round(time.Millisecond), r.samples, r.managerRSS, r.sidecarRSS, r.etcdMiB)
	}
	for _, r := range rows {
		if r.restart != "" {
			fmt.Println(r.restart)
		}
		if r.failover != "" {
			fmt.Println(r.failover)
		}
	}
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}
