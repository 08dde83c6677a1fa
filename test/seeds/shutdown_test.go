package seeds

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

// TestGracefulShutdown: on SIGTERM the sidecar stops being ready at once,
// lets a request already in flight finish, then exits with status 0.
func TestGracefulShutdown(t *testing.T) {
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.DefaultAction = "Authenticated"
	f.AddKey("apk-drain", nil)

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(entered) })
		<-release
		_, _ = io.WriteString(w, "finished")
	}))
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }); up.Close() })

	dir := t.TempDir()
	s := &sidecar{t: t, bundleFile: filepath.Join(dir, "bundle.json"), revFile: filepath.Join(dir, "revocations.json")}
	if err := f.WriteFile(s.bundleFile); err != nil {
		t.Fatal(err)
	}
	s.args = []string{"--bundle-file", s.bundleFile, "--revocations-file", s.revFile,
		"--upstream-port", up.URL[strings.LastIndexByte(up.URL, ':')+1:],
		"--bind-address", "127.0.0.1", "--drain-timeout", "10s"}
	s.run()
	t.Cleanup(s.stop)

	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", s.base+"/slow", nil)
		req.Header.Set("Authorization", basic("apk-drain", f.Secrets["apk-drain"]))
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer func() { _ = r.Body.Close() }()
		b, _ := io.ReadAll(r.Body)
		done <- result{status: r.StatusCode, body: string(b)}
	}()
	select {
	case <-entered:
	case <-time.After(timeout):
		t.Fatal("the request never reached the upstream")
	}

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool {
		r, err := http.Get(s.admin + "/readyz")
		if err != nil {
			return true // admin port already closed: not ready either
		}
		_ = r.Body.Close()
		return r.StatusCode != http.StatusOK
	})

	releaseOnce.Do(func() { close(release) })
	select {
	case r := <-done:
		if r.err != nil || r.status != http.StatusOK || r.body != "finished" {
			t.Fatalf("in-flight request during drain: status %d body %q err %v", r.status, r.body, r.err)
		}
	case <-time.After(timeout):
		t.Fatal("the in-flight request did not finish")
	}
	select {
	case <-s.done:
		if s.waitErr != nil {
			t.Fatalf("sidecar exited with %v, want status 0", s.waitErr)
		}
	case <-time.After(timeout):
		t.Fatal("sidecar did not exit after draining")
	}
	s.cmd = nil
}
