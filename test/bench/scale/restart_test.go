package scale

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
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
// upgrade, a node drain or a leader's failover: the manager process is
// stopped (SIGTERM) and a new one started with the same flags, while the
// sidecar keeps running.
type restartScenario struct {
	c         client.Client
	cfg       *rest.Config
	apiServer rest.Interface
	cpu       cpuMeter
	sidecar   *process
	base, ns  string
	n         int
	bin       string
	env, args []string
	trace     bool
	// profDir (BENCH_PROFILE) receives heap profiles of the new manager: at
	// its RSS peak and once it is quiet.
	profDir string
}

// liveKey is a Ready, enabled ApiKey and its credentials.
type liveKey struct{ name, user, pass string }

// run stops old, starts its successor and measures: the time until a change
// made as it starts reaches the sidecar (ready to act), the changes made
// while it is still busy, the time until it is quiet (its CPU idle), its
// VmHWM and CPU at both moments, the API requests sent meanwhile and
// whether the sidecar kept answering. It returns the new manager and the
// phase's line.
func (s *restartScenario) run(b *testing.B, old *process) (*process, string) {
	ctx, cancel := context.WithTimeout(context.Background(), restartBudget(s.n))
	defer cancel()
	keys := s.liveKeys(ctx, b, 2+restartChanges)
	if len(keys) < 3 {
		b.Errorf("N=%d: restart: only %d Ready, enabled keys left to change", s.n, len(keys))
		return old, ""
	}
	serving, first, later := keys[0], keys[1], keys[2:]
	for _, k := range keys {
		if code := authTest(s.base, k.user, k.pass); code != http.StatusOK {
			b.Fatalf("N=%d: Ready key %s: sidecar answers %d, want 200", s.n, k.name, code)
		}
	}
	probe := probeServing(ctx, s.base, serving)

	stopped, exit := old.terminate(b, 60*time.Second)
	secrets := watchSecretWrites(ctx, b, s.cfg, s.ns, keygatev1.LabelManagedBy+"="+keygatev1.ManagedByValue)
	loadsBefore := s.sidecar.count(withMsg("Loaded bundle"))
	reqBefore := apiRequests(b, s.apiServer)
	start := time.Now()
	mgr := startProcessEnv(b, s.env, "manager", s.bin, s.args...)
	pid := mgr.cmd.Process.Pid
	rss := sampleRSS(ctx, pid)
	var profiled sync.WaitGroup
	var pprofURL string
	peakCtx, stopPeak := context.WithCancel(ctx)
	defer stopPeak()
	if s.profDir != "" {
		pprofURL = "http://" + mgr.waitLog(ctx, b, "pprof server", serverLog("pprof"))["addr"].(string)
		profiled.Go(func() {
			profilePeakHeap(peakCtx, b, mgr, pprofURL, filepath.Join(s.profDir, fmt.Sprintf("manager-heap-restart-peak-%d.pprof", s.n)), time.Second)
		})
	}

	firstTook, err := s.disableAndWait(ctx, first)
	if err != nil {
		b.Errorf("N=%d: restart: the change made as the manager started: %v", s.n, err)
		return mgr, ""
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
			b.Errorf("N=%d: restart: a change while the manager was busy: %v", s.n, err)
			return mgr, ""
		}
		lat = append(lat, took)
	}
	if len(lat) == 0 { // quiet already: one change after the restart's work
		took, err := s.disableAndWait(ctx, later[0])
		if err != nil {
			b.Errorf("N=%d: restart: a change once the manager was quiet: %v", s.n, err)
			return mgr, ""
		}
		lat = append(lat, took)
	}
	select {
	case <-quiet.done:
	case <-ctx.Done():
		b.Errorf("N=%d: restart: the manager was not quiet within the budget (%v)", s.n, restartBudget(s.n))
		return mgr, ""
	}
	hwm, cpuUsed := mgr.peakRSSMiB(b), cpuSeconds(pid)
	peakRSS, peakAt := rss.peak()
	stopPeak()
	profiled.Wait()
	if s.profDir != "" {
		fetch(b, pprofURL+"/debug/pprof/heap?gc=1", filepath.Join(s.profDir, fmt.Sprintf("manager-heap-restart-%d.pprof", s.n)))
	}
	reqs := requestDiff(reqBefore, apiRequests(b, s.apiServer))
	answered, refused := probe.stop()
	if refused > 0 {
		b.Errorf("N=%d: restart: the sidecar refused a Ready key %d times of %d while the manager restarted", s.n, refused, answered)
	}
	changes := 1 + len(lat)
	credWrites, bundleWrites := secrets.countSince(start)
	if s.trace {
		printPasses(mgr, start, quiet.at)
	}
	for msg, count := range mgr.errorSummary() {
		fmt.Printf("  N=%d: restarted manager error (%d×): %.300s\n", s.n, count, msg)
	}
	slices.Sort(lat)
	return mgr, fmt.Sprintf("  N=%d: restart: old manager exited %v after SIGTERM (%s); new manager: workers started +%v, "+
		"a change made as it started in the sidecar +%v (ready to act; %v from its PATCH; VmHWM %.0f MiB, CPU %.1f s), "+
		"then %d changes→sidecar p50 %v / slowest %v, quiet (CPU idle) +%v (VmHWM %.0f MiB, RSS sampled every 250 ms at most %.0f MiB at +%v, CPU %.1f s, "+
		"%d error-level log lines); "+
		"writes seen by a watch: %d of bundle Secrets, %d of credentials Secrets; sidecar bundle loads %d (%d changes); sidecar answered %d of %d requests of a Ready key with 200; "+
		"API requests meanwhile (the %d changes included): %s",
		s.n, ms(stopped), exit, ms(mgr.lastLog("Starting workers").Sub(start)), ms(ready), ms(firstTook), readyHWM, readyCPU,
		len(lat), ms(percentile(lat, 50)), ms(percentile(lat, 100)), ms(quiet.at.Sub(start)), hwm, peakRSS, ms(peakAt.Sub(start)), cpuUsed, mgr.count(isError),
		bundleWrites, credWrites, s.sidecar.count(withMsg("Loaded bundle"))-loadsBefore, changes, answered-refused, answered,
		changes, reqs)
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
	go func() {
		type sample struct {
			at  time.Time
			cpu float64
		}
		var win []sample
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			now := sample{time.Now(), cpuSeconds(pid)}
			win = append(win, now)
			for len(win) > 1 && now.at.Sub(win[1].at) >= quietWindow {
				win = win[1:]
			}
			if now.at.Sub(win[0].at) >= quietWindow && now.cpu-win[0].cpu < quietCPU {
				q.at = win[0].at
				close(q.done)
				return
			}
		}
	}()
	return q
}

func (q *quietWatch) isQuiet() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

// rssSampler keeps the highest VmRSS of a process sampled every 250 ms.
type rssSampler struct {
	mu  sync.Mutex
	max float64
	at  time.Time
}

func sampleRSS(ctx context.Context, pid int) *rssSampler {
	s := &rssSampler{}
	status := fmt.Sprintf("/proc/%d/status", pid)
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if v, err := procStatusMiB(status, "VmRSS"); err == nil {
				s.mu.Lock()
				if v > s.max {
					s.max, s.at = v, time.Now()
				}
				s.mu.Unlock()
			}
		}
	}()
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
