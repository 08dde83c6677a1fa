// Package local runs all of keygate on one machine: a real kube-apiserver
// and etcd (controller-runtime's envtest) with keygate's CRDs, the manager
// process with its injection webhook registered, the samples of the four
// seed platforms, the demo upstream and one sidecar process per sample
// policy, each authenticating as its pod's service account. It prints the
// commands that exercise every seed flow and stays up until its context
// ends, then stops everything it started and removes what it wrote.
// cmd/keygate-local (make run) is its command.
package local

import (
	"context"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// phaseTimeout bounds each wait of a phase (generous: a busy 2-core machine).
const phaseTimeout = 60 * time.Second

// Options configure Run.
type Options struct {
	// ConfigDir is the repository's config/ (crd/bases, webhook, samples).
	ConfigDir string
	// ManagerBin and SidecarBin are the binaries to run.
	ManagerBin, SidecarBin string
	// PluginBin is the kubectl plugin (kubectl-keygate); when the file
	// exists, the printed commands put its directory on PATH and use it.
	PluginBin string
	// AssetsDir holds kube-apiserver and etcd (bin/k8s).
	AssetsDir string
	// LockFile is held while the launcher runs; a second launcher refuses to start.
	LockFile string
	// PortBase is the first sidecar port; the others follow in policy order.
	// 0 lets every sidecar pick a free port.
	PortBase int
	// Namespace receives the samples and the demo pods.
	Namespace string
	// Out receives the progress lines and the commands.
	Out io.Writer
	// Ready, when set, is called once everything is ready (tests).
	Ready func(*Env)
}

// Env is the running environment, as Options.Ready sees it.
type Env struct {
	// RunDir holds the kubeconfigs and the logs; it is removed at the end.
	RunDir string
	// Kubeconfig is the admin kubeconfig file.
	Kubeconfig string
	// Client is an admin client of the API server.
	Client client.Client
	// Sidecars maps a policy to its sidecar's address (host:port).
	Sidecars map[string]string
	// Credentials maps an ApiKey name to its credentials.
	Credentials map[string]Credentials
	// Flows are the commands printed.
	Flows []Flow
	// PluginDir, when not empty, holds kubectl-keygate and goes on PATH.
	PluginDir string
	// Addresses lists every address something started by Run listens on.
	Addresses []string
	// Startup is the time from Run's start to ready.
	Startup time.Duration
}

// runner holds the state of one Run: what to undo, in reverse order.
type runner struct {
	opts  Options
	start time.Time
	undo  []func()

	// What the banner shows.
	pods                     []*corev1.Pod
	sidecars                 []*sidecar
	managerPID, webhookPort  int
	managerLog, upstreamAddr string
}

// say writes s to Out; a terminal that went away is no reason to stop.
func (r *runner) say(s string) { _, _ = io.WriteString(r.opts.Out, s) }

// progress prints one line of progress with the time since the start.
func (r *runner) progress(format string, args ...any) {
	r.say(fmt.Sprintf("[%5.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...)))
}

// onStop registers f to run when Run ends.
func (r *runner) onStop(f func()) { r.undo = append(r.undo, f) }

// cleanup undoes everything, last first.
func (r *runner) cleanup() {
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
	r.undo = nil
}

// Run starts everything, prints the commands, calls opts.Ready, and stays up
// until ctx ends or a process it started exits; then it stops everything.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Namespace == "" {
		opts.Namespace = corev1.NamespaceDefault
	}
	r := &runner{opts: opts, start: time.Now()}
	l, err := takeLock(opts.LockFile)
	if err != nil {
		return err
	}
	r.onStop(func() { _ = l.release() })
	defer func() {
		if ctx.Err() != nil {
			r.say("\nStopping...\n")
		}
		r.cleanup()
		r.say("Stopped: every process ended, temporary files removed.\n")
	}()

	env, watch, err := r.startAll(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting
		}
		return err
	}
	env.Startup = time.Since(r.start)
	r.progress("ready in %.1fs", env.Startup.Seconds())
	r.banner(env)
	if opts.Ready != nil {
		opts.Ready(env)
	}
	select {
	case <-ctx.Done():
		return nil
	case p := <-watch:
		return fmt.Errorf("%s exited unexpectedly; last lines of %s:\n%s", p.name, p.log, p.tail(10))
	}
}
