package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// sidecarProcess is the sidecar binary, built from this tree, running as its
// own process on a policy with the admin's credentials: its default flags
// apart from its addresses, and the environment of the benchmark.
type sidecarProcess struct {
	cmd *exec.Cmd
	// loaded receives the key count of each "Loaded bundle" log line.
	loaded chan int
	// admin receives the admin address of the "Started sidecar" log line.
	admin chan string
}

var buildOnce struct {
	sync.Once
	bin, kubeconfig string
	err             error
}

// startSidecar builds the binary (once per test binary) and starts it with
// extra flags; the process is killed when b ends. BENCH_SIDECAR_ENV adds
// variables to its environment (such as "GOGC=50 GODEBUG=gctrace=1", for the
// sidecar only); BENCH_DEBUG=1 logs what it writes to stderr.
func startSidecar(b *testing.B, ns, pol string, extra ...string) *sidecarProcess {
	b.Helper()
	buildOnce.Do(func() {
		buildOnce.bin = filepath.Join(workDir, "sidecar")
		if out, err := exec.Command("go", "build", "-o", buildOnce.bin, ".").CombinedOutput(); err != nil {
			buildOnce.err = fmt.Errorf("build: %w\n%s", err, out)
			return
		}
		user, err := env.AddUser(envtest.User{Name: "bench-admin", Groups: []string{"system:masters"}}, nil)
		if err != nil {
			buildOnce.err = err
			return
		}
		kc, err := user.KubeConfig()
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.kubeconfig = filepath.Join(workDir, "bench-admin.kubeconfig")
		buildOnce.err = os.WriteFile(buildOnce.kubeconfig, kc, 0o600)
	})
	must(b, buildOnce.err)
	args := append([]string{"--policy", pol, "--namespace", ns, "--kubeconfig", buildOnce.kubeconfig, "--upstream-port", "1",
		"--port", "0", "--admin-port", "0", "--bind-address", "127.0.0.1"}, extra...)
	cmd := exec.Command(buildOnce.bin, args...) //nolint:gosec // the binary built above
	cmd.Env = append(os.Environ(), strings.Fields(os.Getenv("BENCH_SIDECAR_ENV"))...)
	logs, err := cmd.StderrPipe()
	must(b, err)
	must(b, cmd.Start())
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p := &sidecarProcess{cmd: cmd, loaded: make(chan int, 1024), admin: make(chan string, 1)}
	debug := os.Getenv("BENCH_DEBUG") != ""
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var line struct {
				Msg   string `json:"msg"`
				Keys  int    `json:"keys"`
				Admin string `json:"admin"`
			}
			if debug {
				fmt.Fprintln(os.Stderr, "sidecar:", sc.Text())
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch line.Msg {
			case "Loaded bundle":
				p.loaded <- line.Keys
			case "Started sidecar":
				p.admin <- line.Admin
			}
		}
		close(p.loaded)
	}()
	return p
}

// waitKeys waits (up to within) until the sidecar logs a bundle of keys keys.
func (p *sidecarProcess) waitKeys(b *testing.B, keys int, within time.Duration) {
	b.Helper()
	deadline := time.After(within)
	for {
		select {
		case got, ok := <-p.loaded:
			if !ok {
				b.Fatal("the sidecar ended")
			}
			if got == keys {
				return
			}
		case <-deadline:
			b.Fatalf("the sidecar did not log %d keys within %v", keys, within)
		}
	}
}

// statusMiB reads a kB field of the process's /proc/<pid>/status in MiB.
func (p *sidecarProcess) statusMiB(b *testing.B, field string) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	must(b, err)
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			must(b, err)
			return float64(kb) / 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, p.cmd.Process.Pid)
	return 0
}

// cpuSeconds is the CPU time the process has used (user and system).
func (p *sidecarProcess) cpuSeconds(b *testing.B) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	must(b, err)
	// Fields after the command (in parentheses): utime and stime are the
	// 12th and 13th, in clock ticks (100 a second on Linux).
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	utime, err := strconv.Atoi(fields[11])
	must(b, err)
	stime, err := strconv.Atoi(fields[12])
	must(b, err)
	return float64(utime+stime) / 100
}
