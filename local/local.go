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
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/demo/upstream"
)

// Timeouts of the phases (generous: a busy 2-core machine).
const (
	phaseTimeout = 60 * time.Second
)

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

// startAll runs the phases; every process it starts is reported on the
// returned channel if it exits.
func (r *runner) startAll(ctx context.Context) (*Env, <-chan *process, error) {
	opts := r.opts
	dir, err := os.MkdirTemp("", "keygate-local-")
	if err != nil {
		return nil, nil, err
	}
	r.onStop(func() { _ = os.RemoveAll(dir) })
	env := &Env{RunDir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig"), Sidecars: map[string]string{}}
	exited := make(chan *process, 16)
	supervise := func(p *process) {
		r.onStop(p.stop)
		stopping := make(chan struct{})
		r.onStop(func() { close(stopping) })
		go func() {
			select {
			case <-p.done:
				select {
				case <-stopping:
				default:
					exited <- p
				}
			case <-stopping:
			}
		}()
	}

	// The demo upstream, in process.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	upCtx, stopUpstream := context.WithCancel(context.Background())
	upDone := make(chan struct{})
	go func() { defer close(upDone); _ = upstream.Serve(upCtx, ln, time.Second) }()
	r.onStop(func() { stopUpstream(); <-upDone })
	upstreamPort := ln.Addr().(*net.TCPAddr).Port

	// Control plane.
	r.progress("control plane: starting kube-apiserver and etcd from %s", opts.AssetsDir)
	cp, err := startControlPlane(opts.AssetsDir, opts.ConfigDir)
	if err != nil {
		return nil, nil, err
	}
	r.onStop(func() { _ = cp.stop() })
	env.Client = cp.client
	if err := cp.writeAdminKubeconfig(env.Kubeconfig, opts.Namespace); err != nil {
		return nil, nil, err
	}
	apiURL, _ := url.Parse(cp.cfg.Host)
	env.Addresses = append(env.Addresses, apiURL.Host, ln.Addr().String())
	if e := cp.env.ControlPlane.Etcd; e != nil && e.URL != nil {
		env.Addresses = append(env.Addresses, e.URL.Host)
	}
	r.progress("control plane: kube-apiserver https://%s and etcd running; CRDs and the injection webhook configuration installed", apiURL.Host)

	// Manager, with the webhook where the API server expects it.
	host, port, certDir := cp.webhookAddr()
	mgr, err := startProcess("manager", opts.ManagerBin, filepath.Join(dir, "manager.log"), nil,
		"--kubeconfig="+env.Kubeconfig, "--metrics-bind-address=0", "--health-probe-bind-address=0",
		// envtest made the serving certificate and put its CA in the webhook's
		// caBundle, as cert-manager would: the manager serves what it is given.
		"--webhook-cert-mode=cert-manager", "--webhook-cert-dir="+certDir,
		fmt.Sprintf("--webhook-host=%s", host), fmt.Sprintf("--webhook-port=%d", port))
	if err != nil {
		return nil, nil, err
	}
	supervise(mgr)
	env.Addresses = append(env.Addresses, net.JoinHostPort(host, fmt.Sprint(port)))
	r.progress("manager: started (pid %d), reconcilers and injection webhook", mgr.cmd.Process.Pid)

	// Samples, while the manager starts.
	policies, keys, err := applySamples(ctx, cp.client, filepath.Join(opts.ConfigDir, "samples"), opts.Namespace)
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(policies)
	if err := waitWebhook(ctx, cp.client, opts.Namespace, phaseTimeout); err != nil {
		return nil, nil, fmt.Errorf("%w\nlast lines of the manager's log:\n%s", err, mgr.tail(10))
	}
	r.progress("manager: the API server calls its webhook at https://localhost:%d/mutate-v1-pod", port)
	creds, err := waitReady(ctx, cp.client, opts.Namespace, policies, keys, phaseTimeout)
	if err != nil {
		return nil, nil, fmt.Errorf("samples: %w\nlast lines of the manager's log:\n%s", err, mgr.tail(10))
	}
	env.Credentials = creds
	r.progress("samples: %d TokenPolicies and %d ApiKeys Ready (config/samples, plus ApiKey %s)", len(policies), len(keys), LocalKey)

	// One labelled pod per policy: the webhook injects it, the operator
	// grants its service account access to the policy's bundle.
	pods, err := createPods(ctx, cp.client, opts.Namespace, policies)
	if err != nil {
		return nil, nil, err
	}
	users := map[string][]byte{}
	var mu sync.Mutex
	errs := make([]error, len(policies))
	var wg sync.WaitGroup
	for i, p := range policies {
		wg.Go(func() {
			kc, cfg, err := cp.addUser(serviceAccountUser(opts.Namespace, podName(p)))
			if err == nil {
				err = waitAccess(ctx, cfg, opts.Namespace, p, phaseTimeout)
			}
			if err == nil {
				var denied bool
				denied, err = deniedOtherSecrets(ctx, cfg, opts.Namespace, creds["platform"].SecretName)
				if err == nil && !denied {
					err = fmt.Errorf("the service account of %s may read ApiKey credentials: least privilege broken", podName(p))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			users[p], errs[i] = kc, err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, fmt.Errorf("sidecar access: %w", err)
	}
	r.progress("pods: %d labelled pods admitted with the sidecar injected; the operator granted their service accounts their policy's bundle only", len(pods))

	// Sidecars, one per policy, as the pods' service accounts.
	sidecars := make([]*sidecar, len(policies))
	for i, p := range policies {
		wg.Go(func() {
			sport := 0
			if opts.PortBase > 0 {
				sport = opts.PortBase + i
			}
			s, err := startSidecar(ctx, opts.SidecarBin, dir, string(users[p]), opts.Namespace, p, sport, upstreamPort, phaseTimeout)
			if err == nil {
				err = s.waitReady(ctx, phaseTimeout)
			}
			mu.Lock()
			defer mu.Unlock()
			sidecars[i], errs[i] = s, err
		})
	}
	wg.Wait()
	for _, s := range sidecars {
		if s != nil {
			supervise(s.proc)
			env.Sidecars[s.policy] = s.addr
			env.Addresses = append(env.Addresses, s.addr, s.admin)
		}
	}
	if err := errors.Join(errs...); err != nil {
		if opts.PortBase > 0 && strings.Contains(err.Error(), "address already in use") {
			err = fmt.Errorf("%w\n(ports %d-%d are taken: give --port-base another first port)", err, opts.PortBase, opts.PortBase+len(policies)-1)
		}
		return nil, nil, err
	}
	r.progress("sidecars: %d Ready, one per policy, each as its pod's service account", len(sidecars))

	if opts.PluginBin != "" {
		if _, err := os.Stat(opts.PluginBin); err == nil {
			env.PluginDir = filepath.Dir(opts.PluginBin)
		}
	}
	env.Flows = buildFlows(flowInput{sidecars: env.Sidecars, creds: creds, plugin: env.PluginDir != ""})
	r.pods = pods
	r.sidecars = sidecars
	r.managerPID, r.webhookPort, r.managerLog, r.upstreamAddr = mgr.cmd.Process.Pid, port, mgr.log, ln.Addr().String()
	return env, exited, nil
}
