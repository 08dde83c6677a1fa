package local

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers/sidecaraccess"
)

// TestRunExecutesPrintedFlows starts the launcher, executes every command
// it printed, in order, checking each answer, and then checks that stopping
// it leaves no listener, run directory or lock behind.
func TestRunExecutesPrintedFlows(t *testing.T) {
	bin := binaries(t)
	out := &syncBuffer{}
	lockFile := filepath.Join(t.TempDir(), "run.lock")
	opts := Options{
		ConfigDir:  configDir(t),
		ManagerBin: filepath.Join(bin, "manager"),
		SidecarBin: filepath.Join(bin, "sidecar"),
		PluginBin:  filepath.Join(bin, "kubectl-keygate"),
		AssetsDir:  assetsDir(t),
		LockFile:   lockFile,
		Namespace:  "default",
		Out:        out,
	}
	ready := make(chan *Env, 1)
	opts.Ready = func(e *Env) { ready <- e }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()

	var env *Env
	select {
	case env = <-ready:
	case err := <-done:
		t.Fatalf("Run ended before ready: %v\n%s", err, out)
	case <-time.After(startTimeout):
		cancel()
		t.Fatalf("not ready within %s (Run: %v):\n%s", startTimeout, <-done, out)
	}
	t.Logf("ready in %s", env.Startup)
	printed := out.String()
	for _, phase := range []string{"control plane:", "manager:", "samples:", "pods:", "sidecars:", "ready in"} {
		if !strings.Contains(printed, phase) {
			t.Errorf("no progress line %q", phase)
		}
	}

	t.Run("a second launcher is refused by the lock", func(t *testing.T) {
		second := opts
		second.Ready = func(*Env) { t.Error("the second launcher got ready") }
		second.Out = &syncBuffer{}
		err := Run(context.Background(), second)
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("got %v, want ErrLocked", err)
		}
	})

	t.Run("the webhook injected the labelled pods", func(t *testing.T) {
		pods := &corev1.PodList{}
		if err := env.Client.List(ctx, pods, client.InNamespace("default"), client.MatchingLabels{keygatev1.LabelInject: "true"}); err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != 4 {
			t.Fatalf("%d labelled pods, want 4", len(pods.Items))
		}
		for _, p := range pods.Items {
			if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != sidecaraccess.SidecarContainerName ||
				p.Annotations[keygatev1.AnnotationInjected] == "" {
				t.Errorf("pod %s not injected: %+v", p.Name, p.Spec.InitContainers)
			}
			if !strings.Contains(printed, "pod "+p.Name+" (policy ") {
				t.Errorf("the injection of %s is not printed", p.Name)
			}
		}
	})

	t.Run("every printed command works", func(t *testing.T) {
		x := newExecutor(t, env, "default")
		steps := 0
		for _, f := range env.Flows {
			for _, s := range f.Steps {
				steps++
				cmd := s.Command()
				if !strings.Contains(printed, cmd+"\n") {
					t.Fatalf("%s: the command executed was not printed:\n%s", f.Title, cmd)
				}
				if err := x.run(ctx, s); err != nil {
					t.Fatalf("%s: %s\n%s\n%v", f.Title, s.Comment, cmd, err)
				}
			}
		}
		if x.pluginRuns != 2 {
			t.Errorf("%d kubectl keygate commands executed, want 2 (status, rotate)", x.pluginRuns)
		}
		for _, code := range []int{200, 201, 401, 403} {
			if x.statuses[code] == 0 {
				t.Errorf("no step answered %d (seen %v)", code, x.statuses)
			}
		}
		if old := env.Credentials[LocalKey].Authorization; x.vars["NEW_AUTH"] == "" || x.vars["NEW_AUTH"] == old {
			t.Errorf("rotation did not give a new Authorization value")
		}
		t.Logf("%d steps executed, statuses %v", steps, x.statuses)
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(shutdownTimeout):
		t.Fatalf("Run did not stop within %s", shutdownTimeout)
	}
	for _, addr := range env.Addresses {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			t.Errorf("%s still accepts connections", addr)
		}
	}
	for _, path := range []string{env.RunDir, lockFile} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", path, err)
		}
	}
	if !strings.Contains(out.String(), "Stopped:") {
		t.Errorf("no closing line:\n%s", out)
	}
}
