package local

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// sidecar is one sidecar process in Kubernetes mode.
type sidecar struct {
	policy string
	proc   *process
	// addr and admin are the bound listen and admin addresses (host:port).
	addr, admin string
}

// startSidecar runs bin for policy with kubeconfig (the policy's pod's
// service account), forwarding to upstreamPort, listening on port (0: any
// free port) and a free admin port; it returns once the sidecar has reported
// the addresses it bound.
func startSidecar(ctx context.Context, bin, dir, kubeconfig, namespace, policy string, port, upstreamPort int, timeout time.Duration) (*sidecar, error) {
	kcFile := filepath.Join(dir, "sidecar-"+policy+".kubeconfig")
	args := []string{
		"--policy", policy, "--namespace", namespace, "--kubeconfig", kcFile,
		"--upstream-port", strconv.Itoa(upstreamPort), "--bind-address", "127.0.0.1",
		"--port", strconv.Itoa(port), "--admin-port", "0", "--drain-timeout", "1s",
	}
	if err := os.WriteFile(kcFile, []byte(kubeconfig), 0o600); err != nil {
		return nil, err
	}
	s := &sidecar{policy: policy}
	type started struct{ listen, admin string }
	got := make(chan started, 1)
	reported := func(line []byte) bool {
		var l struct{ Msg, Listen, Admin string }
		if json.Unmarshal(line, &l) != nil || l.Msg != "Started sidecar" {
			return false
		}
		got <- started{l.Listen, l.Admin}
		return true
	}
	proc, err := startProcess("sidecar "+policy, bin, filepath.Join(dir, "sidecar-"+policy+".log"), reported, args...)
	if err != nil {
		return nil, err
	}
	s.proc = proc
	wait, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	select {
	case a := <-got:
		s.addr, s.admin = a.listen, a.admin
		return s, nil
	case <-proc.done:
		return nil, fmt.Errorf("sidecar %s exited:\n%s", policy, proc.tail(5))
	case <-wait.Done():
		proc.stop()
		return nil, fmt.Errorf("sidecar %s did not start within %s:\n%s", policy, timeout, proc.tail(5))
	}
}

// waitReady waits for the sidecar's /readyz (its bundle loaded).
func (s *sidecar) waitReady(ctx context.Context, timeout time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	err := poll(ctx, timeout, func() bool {
		if s.proc.exited() {
			return true
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.admin+"/readyz", nil)
		if err != nil {
			return false
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if s.proc.exited() {
		return fmt.Errorf("sidecar %s exited:\n%s", s.policy, s.proc.tail(5))
	}
	if err != nil {
		return fmt.Errorf("sidecar %s /readyz: %w\n%s", s.policy, err, s.proc.tail(5))
	}
	return nil
}
