// Package faults runs keygate as it runs in production — the manager and
// three sidecars of one policy in Kubernetes mode as processes, a real API
// server and etcd (envtest), a demo upstream — puts it under a bounded load
// and breaks things: it counts what went wrong (false 401/403, 5xx, lost
// revocations: asserted to be 0) and prints the timings (never asserted).
//
// `go test ./test/faults` (part of `make test`) runs the short form;
// `make faults` (KEYGATE_FAULTS=long) runs the full counts.
package faults

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
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
)

const (
	namespace   = "faults"
	sidecarUser = "keygate-sidecar"
	// Polling bounds (a wait that runs out fails the test; timings are printed).
	operatorTimeout = 60 * time.Second
	startTimeout    = 60 * time.Second
	interval        = 20 * time.Millisecond
)

// long is `make faults`: the full counts instead of the short form.
var long = os.Getenv("KEYGATE_FAULTS") == "long"

// pick is short in `make test`, full in `make faults`.
func pick[T any](short, full T) T {
	if long {
		return full
	}
	return short
}

// env is the system under test, shared by the scenarios (which run one
// after another, each on its own policy).
var env struct {
	testEnv           *envtest.Environment
	k8s               client.Client
	dir               string
	managerBin        string
	sidecarBin        string
	adminKubeconfig   string
	sidecarKubeconfig string
	upstreamPort      int
	manager           *process
}

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) (code int) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if abs, err := filepath.Abs(filepath.Join("..", "..", "bin", "k8s")); err == nil {
			_ = os.Setenv("KUBEBUILDER_ASSETS", abs)
		}
	}
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "faults setup: "+format+"\n", args...)
		return 1
	}
	dir, err := os.MkdirTemp("", "keygate-faults-")
	if err != nil {
		return fail("temp dir: %v", err)
	}
	env.dir = dir
	defer func() {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "faults: logs kept in %s\n", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}()
	builds := make(chan error, 2)
	for _, name := range []string{"manager", "sidecar"} {
		go func() {
			out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../../cmd/"+name).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("build %s: %w\n%s", name, err, out)
			}
			builds <- err
		}()
	}
	env.managerBin, env.sidecarBin = filepath.Join(dir, "manager"), filepath.Join(dir, "sidecar")

	te := &envtest.Environment{
		CRDDirectoryPaths:       []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing:   true,
		ControlPlaneStopTimeout: 3 * time.Second,
	}
	// A fixed certificate directory keeps the serving certificate, and so
	// every kubeconfig, valid across an API server restart.
	te.ControlPlane.GetAPIServer().CertDir = filepath.Join(dir, "apiserver")
	if err := os.MkdirAll(te.ControlPlane.GetAPIServer().CertDir, 0o700); err != nil {
		return fail("cert dir: %v", err)
	}
	cfg, err := te.Start()
	if err != nil {
		return fail("start envtest (KUBEBUILDER_ASSETS=%s): %v", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	defer func() { _ = te.Stop() }()
	env.testEnv = te
	for range 2 {
		if err := <-builds; err != nil {
			return fail("%v", err)
		}
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fail("scheme: %v", err)
	}
	if err := keygatev1.AddToScheme(scheme); err != nil {
		return fail("scheme: %v", err)
	}
	if env.k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fail("client: %v", err)
	}
	env.adminKubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(cfg, env.adminKubeconfig); err != nil {
		return fail("kubeconfig: %v", err)
	}
	if err := startManager(); err != nil {
		return fail("%v", err)
	}
	defer func() { env.manager.stop() }()

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer upstream.Close()
	env.upstreamPort = upstream.Listener.Addr().(*net.TCPAddr).Port

	ctx := context.Background()
	if err := env.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		return fail("namespace: %v", err)
	}
	user, err := te.AddUser(envtest.User{Name: sidecarUser}, nil)
	if err != nil {
		return fail("sidecar user: %v", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fail("sidecar kubeconfig: %v", err)
	}
	env.sidecarKubeconfig = filepath.Join(dir, "sidecar.kubeconfig")
	if err := os.WriteFile(env.sidecarKubeconfig, kc, 0o600); err != nil {
		return fail("sidecar kubeconfig: %v", err)
	}
	return m.Run()
}

// startManager runs the manager process (again, after a kill).
func startManager() error {
	logPath := filepath.Join(env.dir, fmt.Sprintf("manager-%d.log", time.Now().UnixNano()))
	p, err := startProcess(env.managerBin, logPath, "--kubeconfig="+env.adminKubeconfig, "--enable-injection=false",
		"--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("start manager: %w", err)
	}
	env.manager = p
	return nil
}

// createPolicy applies a TokenPolicy and the sidecars' least-privilege
// access to it (what sidecaraccess grants injected pods), and waits until
// its revocations ConfigMap exists.
func createPolicy(t *testing.T, name string, spec keygatev1.TokenPolicySpec) {
	t.Helper()
	ctx := t.Context()
	spec.Issuer, spec.Audience = "https://"+name+".example.com", name
	if spec.DefaultAction == "" {
		spec.DefaultAction = keygatev1.ActionAuthenticated
	}
	must(t, env.k8s.Create(ctx, &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: spec}))
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: sidecaraccess.RoleName(name)}, Rules: sidecaraccess.Rules(name)}
	must(t, env.k8s.Create(ctx, role))
	must(t, env.k8s.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: sidecarUser}},
	}))
	eventually(t, operatorTimeout, "revocations ConfigMap of "+name, func() bool {
		return env.k8s.Get(ctx, client.ObjectKey{Namespace: namespace, Name: bundle.RevocationsConfigMapName(name)}, &corev1.ConfigMap{}) == nil
	})
}

func writeKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond every interval until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(interval)
	}
}
