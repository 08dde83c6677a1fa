package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/test/logaddr"
)

// process is a child process whose output goes to a log file.
type process struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

func startProcess(bin, logPath string, args ...string) (*process, error) {
	logFile, err := os.Create(logPath) //nolint:gosec // a path under the test's directory
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...) //nolint:gosec // binaries built by TestMain
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, err
	}
	p := &process{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = logFile.Close(); close(p.done) }()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits (SIGKILL after 10 s).
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill sends SIGKILL and waits.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// sidecar is one sidecar process in Kubernetes mode.
type sidecar struct {
	name, policy string
	base, admin  string
	proc         *process
}

// startSidecar runs a sidecar for policy on port 0 and waits for /readyz.
func startSidecar(t *testing.T, name, policy string) *sidecar {
	t.Helper()
	s := &sidecar{name: name, policy: policy}
	s.start(t)
	t.Cleanup(func() { s.proc.stop() })
	return s
}

func (s *sidecar) start(t *testing.T) {
	t.Helper()
	logPath := filepath.Join(env.dir, fmt.Sprintf("%s-%d.log", s.name, time.Now().UnixNano()))
	p, err := startProcess(env.sidecarBin, logPath, "--policy", s.policy, "--namespace", namespace,
		"--kubeconfig", env.sidecarKubeconfig, "--upstream-port", fmt.Sprint(env.upstreamPort),
		"--port", "0", "--admin-port", "0", "--bind-address", "127.0.0.1", "--drain-timeout", "1s",
		// The load comes from a few loopback addresses and keys: the
		// brute-force limiter is not what these scenarios measure.
		"--failure-limit", "1000000")
	if err != nil {
		t.Fatalf("start %s: %v", s.name, err)
	}
	s.proc = p
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	main, admin, err := logaddr.Sidecar(ctx, logPath, p.exited)
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	s.base, s.admin = "http://"+main, "http://"+admin
	eventually(t, startTimeout, s.name+" /readyz", func() bool { return statusOf(s.admin+"/readyz") == 200 })
}

// restart SIGKILLs the sidecar and starts it again (new ports).
func (s *sidecar) killAndRestart(t *testing.T) {
	t.Helper()
	s.proc.kill()
	s.start(t)
}
