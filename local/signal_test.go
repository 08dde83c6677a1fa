package local

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loopbackAddr finds the addresses the launcher prints.
var loopbackAddr = regexp.MustCompile(`127\.0\.0\.1:\d+`)

// TestSignalsLeaveNothingBehind runs cmd/keygate-local as make run does,
// with its own TMPDIR: a second one is refused by the lock, and after
// SIGINT (Ctrl-C) or SIGTERM no process it started is left, no address it
// printed accepts connections, and its TMPDIR is empty (envtest's
// directories, the run directory and the lock all gone).
func TestSignalsLeaveNothingBehind(t *testing.T) {
	bin := binaries(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			tmp := filepath.Join(t.TempDir(), "tmp")
			if err := os.Mkdir(tmp, 0o700); err != nil {
				t.Fatal(err)
			}
			launcher := func() *exec.Cmd {
				cmd := exec.Command(filepath.Join(bin, "keygate-local"), "--bin-dir", bin, "--assets-dir", assetsDir(t),
					"--config-dir", configDir(t), "--port-base", "0")
				cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
				return cmd
			}
			cmd := launcher()
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			stderr := &syncBuffer{}
			cmd.Stderr = stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			out := &syncBuffer{}
			readyc := make(chan struct{})
			copied := make(chan struct{})
			go func() {
				defer close(copied)
				sc := bufio.NewScanner(stdout)
				signalled := false
				for sc.Scan() {
					_, _ = out.Write(append(sc.Bytes(), '\n'))
					if !signalled && strings.Contains(sc.Text(), "] ready in ") {
						signalled = true
						close(readyc)
					}
				}
			}()
			exited := make(chan error, 1)
			go func() { <-copied; exited <- cmd.Wait() }()
			select {
			case <-readyc:
			case err := <-exited:
				t.Fatalf("launcher exited before ready: %v\n%s\n%s", err, out, stderr)
			case <-time.After(startTimeout):
				_ = cmd.Process.Kill()
				t.Fatalf("not ready within %s:\n%s\n%s", startTimeout, out, stderr)
			}
			// The banner follows the ready line; wait for its last command.
			if !waitFor(10*time.Second, func() bool { return strings.Contains(out.String(), "keygate.dev/rotate") }) {
				t.Fatalf("no commands printed:\n%s", out)
			}

			second, err := launcher().CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || !bytes.Contains(second, []byte("already running")) {
				t.Errorf("a second launcher: %v\n%s", err, second)
			}

			addrs := loopbackAddr.FindAllString(out.String(), -1)
			if len(addrs) < 6 {
				t.Fatalf("only %d addresses printed:\n%s", len(addrs), out)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("launcher after %s: %v\n%s", sig, err, stderr)
				}
			case <-time.After(shutdownTimeout):
				_ = cmd.Process.Kill()
				t.Fatalf("launcher still running %s after %s", shutdownTimeout, sig)
			}

			if pids := processesWithEnv("TMPDIR=" + tmp); len(pids) > 0 {
				t.Errorf("processes left behind: %v", pids)
			}
			for _, addr := range addrs {
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					_ = c.Close()
					t.Errorf("%s still accepts connections", addr)
				}
			}
			left, err := os.ReadDir(tmp)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range left {
				t.Errorf("left in TMPDIR: %s", e.Name())
			}
			if !strings.Contains(out.String(), "Stopped:") {
				t.Errorf("no closing line:\n%s", out)
			}
		})
	}
}

// processesWithEnv lists the processes whose environment holds entry
// (children inherit the launcher's TMPDIR, envtest's API server and etcd too).
func processesWithEnv(entry string) []string {
	dirs, _ := filepath.Glob("/proc/[0-9]*/environ")
	var pids []string
	for _, f := range dirs {
		data, err := os.ReadFile(f) // #nosec G304 -- /proc
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(data, []byte{0}) {
			if string(kv) == entry {
				pids = append(pids, filepath.Base(filepath.Dir(f)))
				break
			}
		}
	}
	return pids
}
