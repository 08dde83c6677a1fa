// Package e2e proves that the operator and the sidecar work together: the real
// manager binary reconciles TokenPolicies and ApiKeys on a real API server
// (envtest), and real sidecar binaries in Kubernetes mode enforce what it
// writes, in front of an upstream that echoes the X-Keygate-* headers.
//
// Run: KUBEBUILDER_ASSETS=/work/main/bin/k8s go test -count=1 ./test/e2e/
// (KUBEBUILDER_ASSETS defaults to bin/k8s of the repository).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers/sidecaraccess"
	"github.com/keygate-dev/keygate/test/logaddr"
)

const (
	namespace = "e2e"
	policy    = "payments-api"
	// sidecarUser is the envtest user the sidecars run as; it holds only the
	// Role the operator's sidecaraccess package grants injected sidecars.
	sidecarUser = "keygate-sidecar"

	// operatorTimeout bounds a reconcile: object applied → Ready, Secret written.
	operatorTimeout = 30 * time.Second
	// propagationTimeout bounds an operator write reaching a running sidecar
	// (bundle Secret or revocations ConfigMap → watch → in force).
	propagationTimeout = 10 * time.Second
	// startTimeout bounds a process becoming ready.
	startTimeout = 30 * time.Second
	// stopTimeout is how long a process gets after SIGTERM before SIGKILL.
	stopTimeout = 10 * time.Second
	interval    = 50 * time.Millisecond
)

// suite is the environment TestMain shares with the tests.
var suite struct {
	env               *envtest.Environment
	cfg               *rest.Config
	k8s               client.Client
	sidecarBin        string
	sidecarKubeconfig string
	upstreamPort      int
	logDir            string
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) (code int) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		abs, err := filepath.Abs(filepath.Join("..", "..", "bin", "k8s"))
		if err == nil {
			_ = os.Setenv("KUBEBUILDER_ASSETS", abs)
		}
	}
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "e2e setup: "+format+"\n", args...)
		return 1
	}
	dir, err := os.MkdirTemp("", "keygate-e2e-")
	if err != nil {
		return fail("temp dir: %v", err)
	}
	suite.logDir = dir
	defer func() {
		if code != 0 {
			dumpLog(filepath.Join(dir, "manager.log"))
			fmt.Fprintf(os.Stderr, "e2e: logs kept in %s\n", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}()

	// Build both binaries while the control plane starts.
	type built struct {
		name string
		err  error
	}
	builds := make(chan built, 2)
	for _, name := range []string{"manager", "sidecar"} {
		go func() {
			out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../../cmd/"+name).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("%w\n%s", err, out)
			}
			builds <- built{name, err}
		}()
	}

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		// The API server waits for open watches on SIGTERM; do not wait long.
		ControlPlaneStopTimeout: 5 * time.Second,
	}
	cfg, err := env.Start()
	if err != nil {
		return fail("start envtest (KUBEBUILDER_ASSETS=%s): %v", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	defer func() { _ = env.Stop() }()
	for range 2 {
		if b := <-builds; b.err != nil {
			return fail("build %s: %v", b.name, b.err)
		}
	}
	suite.env, suite.cfg = env, cfg
	suite.sidecarBin = filepath.Join(dir, "sidecar")

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fail("scheme: %v", err)
	}
	if err := keygatev1.AddToScheme(scheme); err != nil {
		return fail("scheme: %v", err)
	}
	if suite.k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fail("client: %v", err)
	}

	// The manager, as one runs it outside a cluster.
	adminKubeconfig := filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(cfg, adminKubeconfig); err != nil {
		return fail("kubeconfig: %v", err)
	}
	managerLog := filepath.Join(dir, "manager.log")
	manager, err := startProcess(filepath.Join(dir, "manager"), managerLog,
		"--kubeconfig="+adminKubeconfig, "--enable-injection=false", "--metrics-bind-address=0",
		"--health-probe-bind-address=127.0.0.1:0", "--zap-log-level=debug")
	if err != nil {
		return fail("start manager: %v", err)
	}
	defer manager.stop()
	addrCtx, cancelAddr := context.WithTimeout(context.Background(), startTimeout)
	probeAddr, err := logaddr.Manager(addrCtx, managerLog, "health probe", manager.exited)
	cancelAddr()
	if err != nil {
		return fail("manager probe address: %v", err)
	}
	if err := waitFor(startTimeout, func() bool { return statusOf("http://"+probeAddr+"/readyz") == http.StatusOK }); err != nil {
		return fail("manager /readyz: %v", err)
	}

	// The upstream workload: echoes the identity headers it received.
	upstream := httptest.NewServer(http.HandlerFunc(echo))
	defer upstream.Close()
	suite.upstreamPort = upstream.Listener.Addr().(*net.TCPAddr).Port

	if err := setupNamespace(context.Background(), dir); err != nil {
		return fail("%v", err)
	}
	return m.Run()
}

// setupNamespace creates the namespace, the sidecars' user and the test
// policy, and waits for its bundle.
func setupNamespace(ctx context.Context, dir string) error {
	if err := suite.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	user, err := suite.env.AddUser(envtest.User{Name: sidecarUser}, nil)
	if err != nil {
		return fmt.Errorf("sidecar user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("sidecar kubeconfig: %w", err)
	}
	suite.sidecarKubeconfig = filepath.Join(dir, "sidecar.kubeconfig")
	if err := os.WriteFile(suite.sidecarKubeconfig, kc, 0o600); err != nil {
		return fmt.Errorf("sidecar kubeconfig: %w", err)
	}
	return createPolicy(ctx, policy, keygatev1.TokenPolicySpec{
		Rules: []keygatev1.Rule{
			{Methods: []string{"GET"}, Paths: []keygatev1.URLPath{"/charges", "/charges/*"}, Permission: "charges:List"},
			{Methods: []string{"GET"}, Paths: []keygatev1.URLPath{"/refunds"}, Permission: "refunds:List"},
		},
		DefaultAction: keygatev1.ActionDeny,
	})
}

// createPolicy applies a TokenPolicy (issuer and audience filled in when
// empty) and the least-privilege access of its sidecars — the Role that
// sidecaraccess grants injected pods, bound to the sidecar user because
// injection is off — and waits for the policy to be Ready with its
// revocations ConfigMap.
func createPolicy(ctx context.Context, name string, spec keygatev1.TokenPolicySpec) error {
	c := suite.k8s
	if spec.Issuer == "" {
		spec.Issuer = "https://" + name + ".example.com"
	}
	if spec.Audience == "" {
		spec.Audience = name
	}
	if err := c.Create(ctx, &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: spec}); err != nil {
		return fmt.Errorf("TokenPolicy %s: %w", name, err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: sidecaraccess.RoleName(name)}, Rules: sidecaraccess.Rules(name)}
	if err := c.Create(ctx, role); err != nil {
		return fmt.Errorf("Role: %w", err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: sidecaraccess.RoleName(name)},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: sidecarUser}},
	}
	if err := c.Create(ctx, binding); err != nil {
		return fmt.Errorf("RoleBinding: %w", err)
	}
	err := waitFor(operatorTimeout, func() bool {
		got := &keygatev1.TokenPolicy{}
		if c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, got) != nil {
			return false
		}
		cm := &corev1.ConfigMap{}
		return meta.IsStatusConditionTrue(got.Status.Conditions, keygatev1.ConditionReady) &&
			c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: bundle.RevocationsConfigMapName(name)}, cm) == nil
	})
	if err != nil {
		return fmt.Errorf("TokenPolicy %s Ready: %w", name, err)
	}
	return nil
}

// echo is the upstream: it answers 200 with the X-Keygate-* request headers
// as a JSON object, and repeats them as response headers.
func echo(w http.ResponseWriter, r *http.Request) {
	got := map[string]string{"path": r.URL.Path}
	for name, values := range r.Header {
		if strings.HasPrefix(name, "X-Keygate-") {
			got[name] = strings.Join(values, ",")
			w.Header()[name] = values
		}
	}
	if r.Header.Get("Authorization") != "" {
		got["Authorization"] = "leaked"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(got)
}

// process is a child process whose output goes to a log file.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProcess(bin, logFile string, args ...string) (*process, error) {
	log, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = log.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM, then SIGKILL after stopTimeout, and waits for the exit.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// writeKubeconfig writes a kubeconfig for the envtest API server's admin.
func writeKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		time.Sleep(interval)
	}
	return nil
}

func statusOf(url string) int {
	resp, err := http.Get(url) //nolint:noctx // loopback probe
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// dumpLog prints the last lines of a log file to stderr.
func dumpLog(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	const keep = 60
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) > keep {
		lines = lines[len(lines)-keep:]
	}
	fmt.Fprintf(os.Stderr, "--- last lines of %s ---\n%s\n", path, bytes.Join(lines, []byte("\n")))
}
