package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// arrivedAt is the key under which a log line records when it was read.
const arrivedAt = "_arrivedAt"

// process is a keygate binary run as its own process, as users run it.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}

	mu    sync.Mutex
	lines []map[string]any // its JSON log lines, parsed
	subs  []chan map[string]any
}

// startProcess runs bin with args, collecting its JSON log lines from stderr.
func startProcess(b *testing.B, name, bin string, args ...string) *process {
	return startProcessEnv(b, nil, name, bin, args...)
}

// startProcessEnv is startProcess with env added to the benchmark's
// environment. The Go runtime's GC trace lines (GODEBUG=gctrace=1) are kept
// as lines whose msg is "gc" and text the line.
func startProcessEnv(b *testing.B, env []string, name, bin string, args ...string) *process {
	b.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := p.cmd.StderrPipe()
	must(b, err)
	p.cmd.Stdout = io.Discard
	must(b, p.cmd.Start())
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := map[string]any{}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				if !strings.HasPrefix(sc.Text(), "gc ") {
					continue
				}
				line = map[string]any{"msg": "gc", "text": sc.Text()}
			}
			line[arrivedAt] = time.Now()
			p.mu.Lock()
			p.lines = append(p.lines, line)
			for _, s := range p.subs {
				select {
				case s <- line:
				default:
				}
			}
			p.mu.Unlock()
		}
	}()
	b.Cleanup(func() { p.stop(b) })
	return p
}

// subscribe returns the log lines logged from now on (a slow reader loses some).
func (p *process) subscribe() chan map[string]any {
	ch := make(chan map[string]any, 1024)
	p.mu.Lock()
	p.subs = append(p.subs, ch)
	p.mu.Unlock()
	return ch
}

// waitLog waits for a log line, already logged or to come, that ok accepts.
func (p *process) waitLog(ctx context.Context, b *testing.B, what string, ok func(map[string]any) bool) map[string]any {
	b.Helper()
	ch := p.subscribe()
	p.mu.Lock()
	for _, l := range p.lines {
		if ok(l) {
			p.mu.Unlock()
			return l
		}
	}
	p.mu.Unlock()
	for {
		select {
		case l := <-ch:
			if ok(l) {
				return l
			}
		case <-p.done:
			b.Fatalf("%s exited while waiting for %s", p.name, what)
		case <-ctx.Done():
			b.Fatalf("%s: no %s: %v", p.name, what, ctx.Err())
		}
	}
}

// peakRSSMiB is the process's VmHWM.
func (p *process) peakRSSMiB(b *testing.B) float64 {
	return vmHWM(b, fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
}

func (p *process) stop(b *testing.B) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = p.cmd.Wait()
}

// terminate sends the process SIGTERM, as the kubelet does, and waits up to
// timeout for it to exit (then kills it); it returns how long the exit took
// and how it went.
func (p *process) terminate(b *testing.B, timeout time.Duration) (time.Duration, string) {
	start := time.Now()
	must(b, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = p.cmd.Wait()
	return time.Since(start), p.cmd.ProcessState.String()
}

// count is the number of log lines so far that match accepts.
func (p *process) count(match func(map[string]any) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if match(l) {
			n++
		}
	}
	return n
}

// withMsg matches the log lines whose msg is msg.
func withMsg(msg string) func(map[string]any) bool {
	return func(l map[string]any) bool { return l["msg"] == msg }
}

// isError matches the error-level log lines.
func isError(l map[string]any) bool { return l["level"] == "error" }

// lastLog is when the last log line so far whose msg is msg was read; zero when none.
func (p *process) lastLog(msg string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.lines) - 1; i >= 0; i-- {
		if p.lines[i]["msg"] == msg {
			return p.lines[i][arrivedAt].(time.Time)
		}
	}
	return time.Time{}
}

func vmHWM(b *testing.B, file string) float64 {
	mib, err := procStatusMiB(file, "VmHWM")
	must(b, err)
	return mib
}

// procStatusMiB reads a kB field (VmHWM, VmRSS) of a /proc/<pid>/status file.
func procStatusMiB(file, field string) (float64, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("%s not found in %s", field, file)
}

// profilePeakHeap saves a heap profile of process p (its pprof server at
// pprofURL) into file each time p's RSS, sampled every interval, reaches a
// new high (by 16 MiB or more), until ctx ends: the profile at the peak, not
// only the one at the end. The heap profile is as of the last GC (no GC is
// forced, so the peak is not disturbed).
func profilePeakHeap(ctx context.Context, b *testing.B, p *process, pprofURL, file string, interval time.Duration) {
	status := fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid)
	best, at := 0.0, time.Now()
	start := at
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if best > 0 {
				fmt.Printf("  %s: heap profile at RSS %.0f MiB, %v into the phase: %s\n", p.name, best, at.Sub(start).Round(time.Second), file)
			}
			return
		case <-tick.C:
		}
		rss, err := procStatusMiB(status, "VmRSS")
		if err != nil || rss < best+16 {
			continue
		}
		resp, err := http.Get(pprofURL + "/debug/pprof/heap") //nolint:gosec,noctx // a loopback address the benchmark read from a log
		if err != nil {
			continue
		}
		raw, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			continue
		}
		if err := os.WriteFile(file, raw, 0o600); err != nil {
			b.Errorf("save %s: %v", file, err)
			return
		}
		best, at = rss, time.Now()
	}
}

// etcdSizeMiB reads etcd's database size from its metrics.
func etcdSizeMiB(b *testing.B, etcdURL string) float64 {
	resp, err := http.Get(strings.TrimSuffix(etcdURL, "/") + "/metrics")
	must(b, err)
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	must(b, err)
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "etcd_mvcc_db_total_size_in_bytes "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			must(b, err)
			return v / (1 << 20)
		}
	}
	b.Fatal("etcd_mvcc_db_total_size_in_bytes not found in etcd's metrics")
	return 0
}

// apiRequests reads the API server's request counts by verb and resource
// (apiserver_request_total), for the breakdown BENCH_DEBUG=1 and the
// restart print; answers other than 2xx are counted apart, with their code
// ("PATCH apikeys/status 409").
func apiRequests(b *testing.B, rc rest.Interface) map[string]float64 {
	return apiMetric(b, rc, "apiserver_request_total")
}

// apiMetric reads an API server metric labelled by verb and resource
// (apiserver_request_total, apiserver_longrunning_requests: the watches
// open), summed by verb and resource, codes other than 2xx apart.
func apiMetric(b *testing.B, rc rest.Interface, name string) map[string]float64 {
	raw, err := rc.Get().AbsPath("/metrics").DoRaw(context.Background())
	must(b, err)
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		labels, value, _ := strings.Cut(rest, "} ")
		var verb, resource, sub, code string
		for _, kv := range strings.Split(labels, ",") {
			k, v, _ := strings.Cut(kv, "=")
			v = strings.Trim(v, `"`)
			switch k {
			case "verb":
				verb = v
			case "resource":
				resource = v
			case "subresource":
				sub = v
			case "code":
				code = v
			}
		}
		if sub != "" {
			resource += "/" + sub
		}
		if code != "" && !strings.HasPrefix(code, "2") {
			resource += " " + code
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err == nil {
			out[verb+" "+resource] += f
		}
	}
	return out
}

// serverLog matches controller-runtime's "starting server" line of the
// server named name (it carries the bound address).
func serverLog(name string) func(map[string]any) bool {
	return func(l map[string]any) bool { return l["msg"] == "starting server" && l["name"] == name }
}

// profileSeconds is the length of the manager's CPU profile
// (BENCH_PROFILE_SECONDS, default 60), from the first ApiKey created.
func profileSeconds() string {
	if v := os.Getenv("BENCH_PROFILE_SECONDS"); v != "" {
		return v
	}
	return "60"
}

// fetch saves what url serves into file (profiles, BENCH_PROFILE=dir).
func fetch(b *testing.B, url, file string) {
	resp, err := http.Get(url) //nolint:gosec,noctx // a loopback address the benchmark read from a log
	if err != nil {
		b.Errorf("fetch %s: %v", url, err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	if err == nil {
		err = os.WriteFile(file, raw, 0o600)
	}
	if err != nil {
		b.Errorf("fetch %s: %v", url, err)
		return
	}
	fmt.Printf("  saved %s\n", file)
}

// printManagerMetrics prints the manager's work queue, reconcile and API
// client figures (sums and counts, no buckets): how long keys waited in the
// queue and in the client-side rate limiter, against the reconciles' own time.
func printManagerMetrics(b *testing.B, base string, n int) {
	resp, err := http.Get(base + "/metrics") //nolint:gosec,noctx // a loopback address the benchmark read from a log
	if err != nil {
		b.Errorf("manager metrics: %v", err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Errorf("manager metrics: %v", err)
		return
	}
	fmt.Printf("  manager metrics at N=%d, all settled:\n", n)
	for _, line := range strings.Split(string(raw), "\n") {
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		switch {
		case strings.HasPrefix(line, "#"), strings.HasSuffix(name, "_bucket"):
		case strings.HasPrefix(name, "workqueue_") && !strings.Contains(line, "unfinished") && !strings.Contains(line, "longest"),
			strings.HasPrefix(name, "controller_runtime_reconcile_"),
			strings.HasPrefix(name, "rest_client_rate_limiter_duration_seconds"),
			strings.HasPrefix(name, "rest_client_request_duration_seconds"),
			strings.HasPrefix(name, "keygate_"):
			fmt.Println("    " + line)
		}
	}
}

// cpuSeconds is the CPU time (user + system) process pid has used so far;
// 0 when it cannot be read.
func cpuSeconds(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	_, after, ok := strings.Cut(string(raw), ") ")
	if !ok {
		return 0
	}
	f := strings.Fields(after)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
}

// pidWithArg finds the process whose command line holds arg (the envtest
// API server and etcd, told apart from other runs by their ports); 0 when none.
func pidWithArg(arg string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(strings.ReplaceAll(string(raw), "\x00", " "), arg) {
			return pid
		}
	}
	return 0
}

// cpuMeter reads the CPU time of a set of processes, to tell which one a
// phase kept busy.
type cpuMeter map[string]int

func (m cpuMeter) read() map[string]float64 {
	out := map[string]float64{}
	for name, pid := range m {
		out[name] = cpuSeconds(pid)
	}
	return out
}

// since formats the CPU seconds each process used since before.
func (m cpuMeter) since(before map[string]float64) string {
	now := m.read()
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	slices.Sort(names)
	var parts []string
	for _, name := range names {
		parts = append(parts, fmt.Sprintf("%s %.1f s", name, now[name]-before[name]))
	}
	return strings.Join(parts, ", ")
}

// errorSummary counts the process's error-level log lines by message and error.
func (p *process) errorSummary() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, l := range p.lines {
		if l["level"] == "error" {
			out[fmt.Sprintf("%v: %v", l["msg"], l["error"])]++
		}
	}
	return out
}
