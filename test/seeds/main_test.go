// Package seeds replays, for each platform in ../../../shared/seeds, its
// documented authentication sequence against the real sidecar binary running
// in file mode in front of a real upstream on loopback.
package seeds

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/test/logaddr"
)

var sidecarBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keygate-seeds-")
	if err != nil {
		panic(err)
	}
	sidecarBin = filepath.Join(dir, "sidecar")
	build := exec.Command("go", "build", "-o", sidecarBin, "github.com/keygate-dev/keygate/cmd/sidecar")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sidecar:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

const (
	timeout  = 5 * time.Second
	interval = 50 * time.Millisecond
)

// seen is what the upstream reports about a request.
type seen struct {
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
}

func upstream(t *testing.T) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(seen{Method: r.Method, Path: r.URL.Path, Headers: r.Header, Body: string(b)})
	}))
	t.Cleanup(up.Close)
	return up
}

// sidecar is a running sidecar process.
type sidecar struct {
	t          *testing.T
	base       string
	admin      string
	cmd        *exec.Cmd
	done       <-chan struct{} // closed when the process has exited
	waitErr    error           // its exit status, once done is closed
	bundleFile string
	revFile    string
	args       []string
}

// start writes the fixture to a file and runs the sidecar on it.
func start(t *testing.T, fix *bundletest.Fixture) *sidecar {
	t.Helper()
	dir := t.TempDir()
	s := &sidecar{t: t, bundleFile: filepath.Join(dir, "bundle.json"), revFile: filepath.Join(dir, "revocations.json")}
	if err := fix.WriteFile(s.bundleFile); err != nil {
		t.Fatal(err)
	}
	up := upstream(t)
	s.args = []string{"--bundle-file", s.bundleFile, "--revocations-file", s.revFile,
		"--upstream-port", strings.TrimPrefix(up.URL[strings.LastIndexByte(up.URL, ':'):], ":"),
		"--bind-address", "127.0.0.1", "--drain-timeout", "2s"}
	s.run()
	t.Cleanup(s.stop)
	return s
}

// run starts the sidecar on port 0 (a restart gets new ports), learns the
// bound addresses from its log and waits until it is ready.
func (s *sidecar) run() {
	s.t.Helper()
	logPath := filepath.Join(s.t.TempDir(), "sidecar.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd = exec.Command(sidecarBin, append(s.args, "--port", "0", "--admin-port", "0")...)
	s.cmd.Stderr = logFile
	if testing.Verbose() {
		s.cmd.Stderr = io.MultiWriter(logFile, os.Stderr)
	}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done, cmd := make(chan struct{}), s.cmd
	s.done = done
	go func() { s.waitErr = cmd.Wait(); _ = logFile.Close(); close(done) }()
	exited := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	main, admin, err := logaddr.Sidecar(ctx, logPath, exited)
	if err != nil {
		s.t.Fatal(err)
	}
	s.base, s.admin = "http://"+main, "http://"+admin
	eventually(s.t, func() bool {
		resp, err := http.Get(s.admin + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (s *sidecar) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(timeout):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		s.cmd = nil
	}
}

func (s *sidecar) restart() { s.stop(); s.run() }

// reload writes a new bundle and waits until it is in force.
func (s *sidecar) reload(fix *bundletest.Fixture, inForce func() bool) {
	s.t.Helper()
	if err := fix.WriteFile(s.bundleFile); err != nil {
		s.t.Fatal(err)
	}
	eventually(s.t, inForce)
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(interval)
	}
}

type resp struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("not JSON: %q", r.Body)
	}
	return m
}

func (r resp) upstream(t *testing.T) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal(r.Body, &s); err != nil || s.Path == "" {
		t.Fatalf("did not reach the upstream: %d %s", r.Status, r.Body)
	}
	return s
}

// call sends a request with header name/value pairs.
func (s *sidecar) call(method, path, body string, headers ...string) resp {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.base+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = r.Body.Close() }()
	b, _ := io.ReadAll(r.Body)
	return resp{Status: r.StatusCode, Header: r.Header, Body: b}
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func want(t *testing.T, r resp, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("got %d %s, want %d", r.Status, r.Body, status)
	}
}

const generic401 = `{"error":"unauthorized","message":"authentication required"}` + "\n"

func want401(t *testing.T, r resp) {
	t.Helper()
	if r.Status != 401 || string(r.Body) != generic401 || r.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("want the generic 401, got %d %q", r.Status, r.Body)
	}
}
