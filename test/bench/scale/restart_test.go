package scale

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// restartChanges is the most changes made while the restarted manager is
// still busy with its start (after the first, made as it starts).
const restartChanges = 5

// restartBudget bounds the restart phase of one size.
func restartBudget(n int) time.Duration { return 3*time.Minute + time.Duration(n)*3*time.Millisecond }

// restartScenario is the manager restarted with N keys Ready, as on an
// upgrade or a node drain (run), and a leader's failover to a warm standby,
// as the chart's 2 leader-elected replicas meet on an upgrade (failover):
// the manager in charge is stopped (SIGTERM) and another takes over, while
// the sidecar keeps running.
type restartScenario struct {
	c         client.Client
	cfg       *rest.Config
	apiServer rest.Interface
	cpu       cpuMeter
	sidecar   *process
	base, ns  string
	n         int
	bin       string
	env, args []string // args include --leader-elect
	trace     bool
	// profDir (BENCH_PROFILE) receives heap profiles of the new manager: at
	// its RSS peak and once it is quiet.
	profDir string
}

// liveKey is a Ready, enabled ApiKey and its credentials.
type liveKey struct{ name, user, pass string }

// run stops old, starts its successor and measures it (takeOver). It
// returns the new manager and the phase's line.
func (s *restartScenario) run(b *testing.B, old *process) (*process, string) {
	ctx, cancel := context.WithTimeout(context.Background(), restartBudget(s.n))
	defer cancel()
	keys, probe := s.prepare(ctx, b, "restart")
	if probe == nil {
		return old, ""
	}
	stopped, exit := old.terminate(b, 60*time.Second)
	w := s.openWindow(ctx, b)
	mgr := startProcessEnv(b, s.env, "manager", s.bin, s.args...)
	line, ok := s.takeOver(ctx, b, "restart", mgr, w, keys, probe)
	if !ok {
		return mgr, ""
	}
	return mgr, fmt.Sprintf("  N=%d: restart: old manager exited %v after SIGTERM (%s); new manager: %s", s.n, ms(stopped), exit, line)
}

// failover starts a standby with leader's flags (both leader-elected), waits
// until its cache holds every ApiKey and it is quiet, then stops leader
// (SIGTERM) and measures the standby from that moment (takeOver). It returns
// the new leader and the phase's line.
func (s *restartScenario) failover(b *testing.B, leader *process) (*process, string) {
	ctx, cancel := context.WithTimeout(context.Background(), restartBudget(s.n))
	defer cancel()
	keys, probe := s.prepare(ctx, b, "failover")
	if probe == nil {
		return leader, ""
	}
	watchesBefore := apiMetric(b, s.apiServer, "apiserver_longrunning_requests")
	began := time.Now()
	// Its metrics server (not leader-only) tells when its cache is synced:
	// keygate_apikeys is read from the cache, which answers once synced.
	standby := startProcessEnv(b, s.env, "standby", s.bin, append(slices.Clone(s.args), "--metrics-bind-address=127.0.0.1:0")...)
	metrics := "http://" + standby.waitLog(ctx, b, "metrics server", serverLog("metrics"))["addr"].(string) + "/metrics"
	if err := waitCachedKeys(ctx, metrics, s.n); err != nil {
		b.Errorf("N=%d: failover: the standby's cache: %v", s.n, err)
		return leader, ""
	}
	synced := time.Since(began)
	quiet := watchQuiet(ctx, standby.cmd.Process.Pid)
	select {
	case <-quiet.done:
	case <-ctx.Done():
		b.Errorf("N=%d: failover: the standby was not quiet within the budget (%v)", s.n, restartBudget(s.n))
		return leader, ""
	}
	if standby.count(withMsg("Successfully acquired lease")) > 0 {
		b.Errorf("N=%d: failover: the standby acquired the lease while the leader ran", s.n)
	}
	warm := fmt.Sprintf("standby: its cache held the %d ApiKeys +%v after its start, quiet +%v (VmHWM %.0f MiB, CPU %.1f s); watches it opened: %s",
		s.n, ms(synced), ms(quiet.at.Sub(began)), standby.peakRSSMiB(b), cpuSeconds(standby.cmd.Process.Pid),
		requestDiff(watchesBefore, apiMetric(b, s.apiServer, "apiserver_longrunning_requests")))
	w := s.openWindow(ctx, b)
	stopped, exit := leader.terminate(b, 60*time.Second)
	// The first change is made once the leader has exited (its exit time
	// later than the SIGTERM), so that the standby is the one that acts.
	line, ok := s.takeOver(ctx, b, "failover", standby, w, keys, probe)
	if !ok {
		return standby, ""
	}
	return standby, fmt.Sprintf("  N=%d: failover: %s; leader exited %v after SIGTERM (%s); from the SIGTERM, standby: %s", s.n, warm, ms(stopped), exit, line)
}

// prepare finds the keys a phase changes (the first as the new manager
// starts, the rest while it is busy) and starts asking the sidecar with
// another one; a nil probe when too few are left.
func (s *restartScenario) prepare(ctx context.Context, b *testing.B, phase string) ([]liveKey, *servingProbe) {
	keys := s.liveKeys(ctx, b, 2+restartChanges)
	if len(keys) < 3 {
		b.Errorf("N=%d: %s: only %d Ready, enabled keys left to change", s.n, phase, len(keys))
		return nil, nil
	}
	for _, k := range keys {
		if code := authTest(s.base, k.user, k.pass); code != http.StatusOK {
			b.Fatalf("N=%d: Ready key %s: sidecar answers %d, want 200", s.n, k.name, code)
		}
	}
	return keys[1:], probeServing(ctx, s.base, keys[0])
}

// window is what a phase counts from: its start, a watch of keygate's
// Secrets, the sidecar's bundle loads and the API server's requests so far.
type window struct {
	start   time.Time
	secrets *shardWriteTimes
	loads   int
	reqs    map[string]float64
}

func (s *restartScenario) openWindow(ctx context.Context, b *testing.B) window {
	secrets := watchSecretWrites(ctx, b, s.cfg, s.ns, keygatev1.LabelManagedBy+"="+keygatev1.ManagedByValue)
	return window{secrets: secrets, loads: s.sidecar.count(withMsg("Loaded bundle")), reqs: apiRequests(b, s.apiServer), start: time.Now()}
}

// takeOver measures mgr, in charge from w.start: the time until a change
// made then reaches the sidecar (ready to act), the changes made while it is
// still busy, the time until it is quiet (its CPU idle), its VmHWM and CPU
// at both moments, the API requests sent meanwhile and whether the sidecar
// kept answering (probe, stopped here). keys are the first change's and the
// later ones'. It returns the phase's figures; false when it failed.
func (s *restartScenario) takeOver(ctx context.Context, b *testing.B, phase string, mgr *process, w window, keys []liveKey, probe *servingProbe) (string, bool) {
	first, later := keys[0], keys[1:]
	start := w.start
	pid := mgr.cmd.Process.Pid
	rss := sampleRSS(ctx, pid)
	var profiled sync.WaitGroup
	var pprofURL string
	peakCtx, stopPeak := context.WithCancel(ctx)
	defer stopPeak()
	if s.profDir != "" {
		pprofURL = "http://" + mgr.waitLog(ctx, b, "pprof server", serverLog("pprof"))["addr"].(string)
		profiled.Go(func() {
			profilePeakHeap(peakCtx, b, mgr, pprofURL, filepath.Join(s.profDir, fmt.Sprintf("manager-heap-%s-peak-%d.pprof", phase, s.n)), time.Second)
		})
	}

	firstTook, err := s.disableAndWait(ctx, first)
	if err != nil {
		b.Errorf("N=%d: %s: the change made as the manager took over: %v", s.n, phase, err)
		return "", false
	}
	ready := time.Since(start)
	readyHWM, readyCPU := mgr.peakRSSMiB(b), cpuSeconds(pid)
	// Watched from now on: while its lists are under way, it may wait on
	// the API server with its CPU idle.
	quiet := watchQuiet(ctx, pid)
	var lat []time.Duration
	for _, k := range later {
		if quiet.isQuiet() {
			break
		}
		took, err := s.disableAndWait(ctx, k)
		if err != nil {
			b.Errorf("N=%d: %s: a change while the manager was busy: %v", s.n, phase, err)
			return "", false
		}
		lat = append(lat, took)
	}
	if len(lat) == 0 { // quiet already: one change after the takeover's work
		took, err := s.disableAndWait(ctx, later[0])
		if err != nil {
			b.Errorf("N=%d: %s: a change once the manager was quiet: %v", s.n, phase, err)
			return "", false
		}
		lat = append(lat, took)
	}
	select {
	case <-quiet.done:
	case <-ctx.Done():
		b.Errorf("N=%d: %s: the manager was not quiet within the budget (%v)", s.n, phase, restartBudget(s.n))
		return "", false
	}
	hwm, cpuUsed := mgr.peakRSSMiB(b), cpuSeconds(pid)
	peakRSS, peakAt := rss.peak()
	stopPeak()
	profiled.Wait()
	if s.profDir != "" {
		fetch(b, pprofURL+"/debug/pprof/heap?gc=1", filepath.Join(s.profDir, fmt.Sprintf("manager-heap-%s-%d.pprof", phase, s.n)))
	}
	reqs := requestDiff(w.reqs, apiRequests(b, s.apiServer))
	answered, refused := probe.stop()
	if refused > 0 {
		b.Errorf("N=%d: %s: the sidecar refused a Ready key %d times of %d while the manager changed", s.n, phase, refused, answered)
	}
	changes := 1 + len(lat)
	credWrites, bundleWrites := w.secrets.countSince(start)
	if s.trace {
		printPasses(mgr, start, quiet.at)
	}
	for msg, count := range mgr.errorSummary() {
		fmt.Printf("  N=%d: %s: new manager error (%d×): %.300s\n", s.n, phase, count, msg)
	}
	slices.Sort(lat)
	return fmt.Sprintf("lease acquired +%v, workers started +%v, "+
		"a change made then in the sidecar +%v (ready to act; %v from its PATCH; VmHWM %.0f MiB, CPU %.1f s), "+
		"then %d changes→sidecar p50 %v / slowest %v, quiet (CPU idle) +%v (VmHWM %.0f MiB, RSS sampled every 250 ms at most %.0f MiB at +%v, CPU %.1f s, "+
		"%d error-level log lines); "+
		"writes seen by a watch: %d of bundle Secrets, %d of credentials Secrets; sidecar bundle loads %d (%d changes); sidecar answered %d of %d requests of a Ready key with 200; "+
		"API requests meanwhile (the %d changes included): %s",
		since(mgr.lastLog("Successfully acquired lease"), start), since(mgr.lastLog("Starting workers"), start), ms(ready), ms(firstTook), readyHWM, readyCPU,
		len(lat), ms(percentile(lat, 50)), ms(percentile(lat, 100)), ms(quiet.at.Sub(start)), hwm, peakRSS, ms(peakAt.Sub(start)), cpuUsed, mgr.count(isError),
		bundleWrites, credWrites, s.sidecar.count(withMsg("Loaded bundle"))-w.loads, changes, answered-refused, answered,
		changes, reqs), true
}

// since is t relative to start, "–" when t is zero (no such log line).
func since(t, start time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return ms(t.Sub(start)).String()
}

// waitCachedKeys polls a manager's /metrics until keygate_apikeys, read from
// its cache, counts n ApiKeys.
func waitCachedKeys(ctx context.Context, metricsURL string, n int) error {
	var last string
	for {
		if count, err := cachedKeys(ctx, metricsURL); err != nil {
			last = err.Error()
		} else if count == n {
			return nil
		} else {
			last = fmt.Sprintf("%d ApiKeys", count)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("keygate_apikeys not %d when the budget ran out (last: %s)", n, last)
		case <-time.After(200 * time.Millisecond): // the poll's pace
		}
	}
}

// cachedKeys sums keygate_apikeys on a manager's /metrics.
func cachedKeys(ctx context.Context, metricsURL string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	total := 0.0
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "keygate_apikeys{"); ok {
			_, value, _ := strings.Cut(rest, "} ")
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				return 0, fmt.Errorf("keygate_apikeys: %w", err)
			}
			total += v
		}
	}
	return int(total), nil
}

// liveKeys returns up to count Ready, enabled ApiKeys with their
// credentials, from the last one down (the change samples took the first).
func (s *restartScenario) liveKeys(ctx context.Context, b *testing.B, count int) []liveKey {
	var out []liveKey
	for i := s.n - 1; i >= 0 && len(out) < count; i-- {
		key := &keygatev1.ApiKey{}
		must(b, s.c.Get(ctx, types.NamespacedName{Namespace: s.ns, Name: fmt.Sprintf("key-%06d", i)}, key))
		if key.Spec.Disabled || !meta.IsStatusConditionTrue(key.Status.Conditions, keygatev1.ConditionReady) {
			continue
		}
		sec := &corev1.Secret{}
		must(b, s.c.Get(ctx, types.NamespacedName{Namespace: s.ns, Name: key.Status.SecretName}, sec))
		out = append(out, liveKey{name: key.Name, user: string(sec.Data["key"]), pass: string(sec.Data["secret"])})
	}
	return out
}

// disableAndWait disables k and polls the sidecar until it refuses k's
// secret; it returns how long that took from the PATCH sent.
func (s *restartScenario) disableAndWait(ctx context.Context, k liveKey) (time.Duration, error) {
	t0 := time.Now()
	key := &keygatev1.ApiKey{}
	key.Namespace, key.Name = s.ns, k.name
	if err := s.c.Patch(ctx, key, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"disabled":true}}`))); err != nil {
		return 0, fmt.Errorf("disable %s: %w", k.name, err)
	}
	for code := authTest(s.base, k.user, k.pass); code != http.StatusUnauthorized; code = authTest(s.base, k.user, k.pass) {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("disabled key %s: the sidecar still answered %d (want 401) %v later, when the budget ran out",
				k.name, code, ms(time.Since(t0)))
		}
		time.Sleep(2 * time.Millisecond) // sampling resolution, not synchronisation
	}
	return time.Since(t0), nil
}

// servingProbe asks the sidecar with a Ready key's credentials, every
// 20 ms, until stopped, and counts the answers other than 200.
type servingProbe struct {
	mu                sync.Mutex
	answered, refused int
	halt              context.CancelFunc
	done              chan struct{}
}

func probeServing(ctx context.Context, base string, k liveKey) *servingProbe {
	ctx, halt := context.WithCancel(ctx)
	p := &servingProbe{halt: halt, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			code := authTest(base, k.user, k.pass)
			p.mu.Lock()
			p.answered++
			if code != http.StatusOK {
				p.refused++
			}
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond): // the probe's pace
			}
		}
	}()
	return p
}

// stop ends the probe and returns its counts.
func (p *servingProbe) stop() (answered, refused int) {
	p.halt()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.answered, p.refused
}

// quietWatch tells when a process has gone quiet: less than quietCPU
// seconds of CPU in the last quietWindow.
type quietWatch struct {
	done chan struct{}
	at   time.Time // when it went quiet (the window's start); read once done is closed
}

const (
	quietWindow = 3 * time.Second
	quietCPU    = 0.05
)

func watchQuiet(ctx context.Context, pid int) *quietWatch {
	q := &quietWatch{done: make(chan struct{})}
	type sample struct {
		at  time.Time
		cpu float64
	}
	var win []sample
	go everySample(ctx, func() bool {
		now := sample{time.Now(), cpuSeconds(pid)}
		win = append(win, now)
		for len(win) > 1 && now.at.Sub(win[1].at) >= quietWindow {
			win = win[1:]
		}
		if now.at.Sub(win[0].at) >= quietWindow && now.cpu-win[0].cpu < quietCPU {
			q.at = win[0].at
			close(q.done)
			return false
		}
		return true
	})
	return q
}

// samplePeriod is how often watchQuiet and sampleRSS look at a process.
const samplePeriod = 250 * time.Millisecond

// everySample calls sample every samplePeriod until it returns false or ctx
// ends.
func everySample(ctx context.Context, sample func() bool) {
	tick := time.NewTicker(samplePeriod)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !sample() {
			return
		}
	}
}

func (q *quietWatch) isQuiet() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

// rssSampler keeps the highest VmRSS of a process sampled every samplePeriod.
type rssSampler struct {
	mu  sync.Mutex
	max float64
	at  time.Time
}

func sampleRSS(ctx context.Context, pid int) *rssSampler {
	s := &rssSampler{}
	status := fmt.Sprintf("/proc/%d/status", pid)
	go everySample(ctx, func() bool {
		if v, err := procStatusMiB(status, "VmRSS"); err == nil {
			s.mu.Lock()
			if v > s.max {
				s.max, s.at = v, time.Now()
			}
			s.mu.Unlock()
		}
		return true
	})
	return s
}

// peak is the highest RSS sampled so far, in MiB, and when.
func (s *rssSampler) peak() (float64, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max, s.at
}

// requestDiff formats the API requests counted in cur and not in before,
// by verb and resource (requests for no resource, such as /metrics, left out).
func requestDiff(before, cur map[string]float64) string {
	var parts []string
	for k, v := range cur {
		verb, resource, _ := strings.Cut(k, " ")
		if d := v - before[k]; d > 0 && resource != "" && !strings.HasPrefix(resource, "/") {
			parts = append(parts, fmt.Sprintf("%s %s %.0f", verb, resource, d))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
