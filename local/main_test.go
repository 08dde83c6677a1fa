package local

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
)

// Timeouts of the tests that run the launcher (a busy 2-core machine).
const (
	// startTimeout bounds the launcher becoming ready.
	startTimeout = 3 * time.Minute
	// shutdownTimeout bounds the launcher stopping after a signal or cancel.
	shutdownTimeout = time.Minute
	// flowTimeout bounds a step that waits for the operator or a sidecar.
	flowTimeout = 30 * time.Second
	interval    = 50 * time.Millisecond
)

// built holds the binaries the launcher runs, built once per test binary.
var built struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	ctrl.SetLogger(logr.Discard()) // as cmd/keygate-local does
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// binaries builds manager, sidecar, keygate-local and kubectl-keygate into one directory.
func binaries(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "keygate-local-test-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.dir = dir
		for _, name := range []string{"manager", "sidecar", "keygate-local", "kubectl-keygate"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../cmd/"+name)
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("build %s: %w\n%s", name, err, out)
				return
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

// assetsDir is KUBEBUILDER_ASSETS, else the repository's bin/k8s.
func assetsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join("..", "bin", "k8s")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func configDir(t *testing.T) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join("..", "config"))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}
