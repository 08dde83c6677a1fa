package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keygate-dev/keygate/demo/upstream"
)

// start is what the phases of startAll build up.
type start struct {
	env          *Env
	exited       chan *process
	upstreamPort int
	cp           *controlPlane
	mgr          *process
	policies     []string
	users        map[string][]byte // policy → its pod's service account kubeconfig
}

// startAll runs the phases in order; every process they start is reported
// on the returned channel if it exits.
func (r *runner) startAll(ctx context.Context) (*Env, <-chan *process, error) {
	st := &start{env: &Env{Sidecars: map[string]string{}}, exited: make(chan *process, 16)}
	for _, phase := range []func(context.Context, *start) error{
		r.makeRunDir, r.startUpstream, r.startControlPlane, r.startManager, r.applySamples, r.createPods, r.startSidecars,
	} {
		if err := phase(ctx, st); err != nil {
			return nil, nil, err
		}
	}
	if r.opts.PluginBin != "" {
		if _, err := os.Stat(r.opts.PluginBin); err == nil {
			st.env.PluginDir = filepath.Dir(r.opts.PluginBin)
		}
	}
	st.env.Flows = buildFlows(flowInput{sidecars: st.env.Sidecars, creds: st.env.Credentials, plugin: st.env.PluginDir != ""})
	return st.env, st.exited, nil
}

// supervise stops p when Run ends, and reports it on st.exited if it exits before.
func (r *runner) supervise(st *start, p *process) {
	r.onStop(p.stop)
	stopping := make(chan struct{})
	r.onStop(func() { close(stopping) })
	go func() {
		select {
		case <-p.done:
			select {
			case <-stopping:
			default:
				st.exited <- p
			}
		case <-stopping:
		}
	}()
}

func (r *runner) makeRunDir(_ context.Context, st *start) error {
	dir, err := os.MkdirTemp("", "keygate-local-")
	if err != nil {
		return err
	}
	r.onStop(func() { _ = os.RemoveAll(dir) })
	st.env.RunDir, st.env.Kubeconfig = dir, filepath.Join(dir, "kubeconfig")
	return nil
}

// startUpstream serves the demo upstream in process.
func (r *runner) startUpstream(_ context.Context, st *start) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = upstream.Serve(ctx, ln, time.Second) }()
	r.onStop(func() { stop(); <-done })
	st.upstreamPort = ln.Addr().(*net.TCPAddr).Port
	r.upstreamAddr = ln.Addr().String()
	st.env.Addresses = append(st.env.Addresses, r.upstreamAddr)
	return nil
}

func (r *runner) startControlPlane(_ context.Context, st *start) error {
	r.progress("control plane: starting kube-apiserver and etcd from %s", r.opts.AssetsDir)
	cp, err := startControlPlane(r.opts.AssetsDir, r.opts.ConfigDir)
	if err != nil {
		return err
	}
	r.onStop(func() { _ = cp.stop() })
	st.cp, st.env.Client = cp, cp.client
	if err := cp.writeAdminKubeconfig(st.env.Kubeconfig, r.opts.Namespace); err != nil {
		return err
	}
	apiURL, err := url.Parse(cp.cfg.Host)
	if err != nil {
		return err
	}
	st.env.Addresses = append([]string{apiURL.Host}, st.env.Addresses...)
	if e := cp.env.ControlPlane.Etcd; e != nil && e.URL != nil {
		st.env.Addresses = append(st.env.Addresses, e.URL.Host)
	}
	r.progress("control plane: kube-apiserver https://%s and etcd running; CRDs and the injection webhook configuration installed", apiURL.Host)
	return nil
}

// startManager runs the manager with its webhook on a port it binds itself
// (port 0: nothing picks a port first and binds it later) and points the
// API server's webhook configuration at the address the manager reports.
func (r *runner) startManager(ctx context.Context, st *start) error {
	host, certDir := st.cp.webhookHost(), st.cp.webhookCertDir()
	bound := make(chan string, 1)
	reported := func(line []byte) bool {
		var l struct{ Msg, Name, Addr string }
		if json.Unmarshal(line, &l) != nil || l.Msg != "starting server" || l.Name != "webhook" {
			return false
		}
		bound <- l.Addr
		return true
	}
	mgr, err := startProcess("manager", r.opts.ManagerBin, filepath.Join(st.env.RunDir, "manager.log"), reported,
		"--kubeconfig="+st.env.Kubeconfig, "--metrics-bind-address=0", "--health-probe-bind-address=0",
		// envtest made the serving certificate and put its CA in the webhook's
		// caBundle, as cert-manager would: the manager serves what it is given.
		"--webhook-cert-mode=cert-manager", "--webhook-cert-dir="+certDir,
		"--webhook-host="+host, "--webhook-port=0")
	if err != nil {
		return err
	}
	r.supervise(st, mgr)
	st.mgr = mgr
	wait, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	var addr string
	select {
	case addr = <-bound:
	case <-mgr.done:
		return fmt.Errorf("manager exited:\n%s", mgr.tail(10))
	case <-wait.Done():
		return fmt.Errorf("manager did not start its webhook server within %s:\n%s", phaseTimeout, mgr.tail(10))
	}
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("manager reported webhook address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("manager reported webhook address %q: %w", addr, err)
	}
	if err := st.cp.pointWebhookAt(ctx, port); err != nil {
		return err
	}
	st.env.Addresses = append(st.env.Addresses, addr)
	r.managerPID, r.webhookPort, r.managerLog = mgr.cmd.Process.Pid, port, mgr.log
	r.progress("manager: started (pid %d), reconcilers and injection webhook", mgr.cmd.Process.Pid)
	return nil
}

// applySamples applies the samples while the manager starts, waits for the
// webhook to answer, then for every sample to be Ready.
func (r *runner) applySamples(ctx context.Context, st *start) error {
	ns := r.opts.Namespace
	policies, keys, err := applySamples(ctx, st.cp.client, filepath.Join(r.opts.ConfigDir, "samples"), ns)
	if err != nil {
		return err
	}
	sort.Strings(policies)
	st.policies = policies
	if err := waitWebhook(ctx, st.cp.client, ns, phaseTimeout); err != nil {
		return fmt.Errorf("%w\nlast lines of the manager's log:\n%s", err, st.mgr.tail(10))
	}
	r.progress("manager: the API server calls its webhook at https://localhost:%d/mutate-v1-pod", r.webhookPort)
	creds, err := waitReady(ctx, st.cp.client, ns, policies, keys, phaseTimeout)
	if err != nil {
		return fmt.Errorf("samples: %w\nlast lines of the manager's log:\n%s", err, st.mgr.tail(10))
	}
	st.env.Credentials = creds
	r.progress("samples: %d TokenPolicies and %d ApiKeys Ready (config/samples, plus ApiKey %s)", len(policies), len(keys), LocalKey)
	return nil
}

// createPods creates one labelled pod per policy, which the webhook injects
// and whose service account the operator grants its policy's bundle; it
// waits for that access and checks that it goes no further.
func (r *runner) createPods(ctx context.Context, st *start) error {
	ns := r.opts.Namespace
	pods, err := createPods(ctx, st.cp.client, ns, st.policies)
	if err != nil {
		return err
	}
	r.pods = pods
	st.users = map[string][]byte{}
	var mu sync.Mutex
	errs := make([]error, len(st.policies))
	var wg sync.WaitGroup
	for i, p := range st.policies {
		wg.Go(func() {
			kc, cfg, err := st.cp.addUser(serviceAccountUser(ns, podName(p)))
			if err == nil {
				err = waitAccess(ctx, cfg, ns, p, phaseTimeout)
			}
			if err == nil {
				var denied bool
				denied, err = deniedOtherSecrets(ctx, cfg, ns, st.env.Credentials["platform"].SecretName)
				if err == nil && !denied {
					err = fmt.Errorf("the service account of %s may read ApiKey credentials: least privilege broken", podName(p))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			st.users[p], errs[i] = kc, err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sidecar access: %w", err)
	}
	r.progress("pods: %d labelled pods admitted with the sidecar injected; the operator granted their service accounts their policy's bundle only", len(pods))
	return nil
}

// startSidecars runs one sidecar per policy, as the policy's pod's service account.
func (r *runner) startSidecars(ctx context.Context, st *start) error {
	opts := r.opts
	sidecars := make([]*sidecar, len(st.policies))
	errs := make([]error, len(st.policies))
	var wg sync.WaitGroup
	for i, p := range st.policies {
		wg.Go(func() {
			port := 0
			if opts.PortBase > 0 {
				port = opts.PortBase + i
			}
			s, err := startSidecar(ctx, opts.SidecarBin, st.env.RunDir, string(st.users[p]), opts.Namespace, p, port, st.upstreamPort, phaseTimeout)
			if err == nil {
				err = s.waitReady(ctx, phaseTimeout)
			}
			sidecars[i], errs[i] = s, err
		})
	}
	wg.Wait()
	for _, s := range sidecars {
		if s != nil {
			r.supervise(st, s.proc)
			r.sidecars = append(r.sidecars, s)
			st.env.Sidecars[s.policy] = s.addr
			st.env.Addresses = append(st.env.Addresses, s.addr, s.admin)
		}
	}
	if err := errors.Join(errs...); err != nil {
		if opts.PortBase > 0 && strings.Contains(err.Error(), "address already in use") {
			err = fmt.Errorf("%w\n(ports %d-%d are taken: give --port-base another first port)", err, opts.PortBase, opts.PortBase+len(st.policies)-1)
		}
		return err
	}
	r.progress("sidecars: %d Ready, one per policy, each as its pod's service account", len(sidecars))
	return nil
}
