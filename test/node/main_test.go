//go:build e2enode

// Package node tests keygate on a real single-node cluster: kubelet,
// containerd and runc, a CNI bridge, the control plane built from
// k8s.io/kubernetes (hack/node.sh). keygate is installed with its Helm chart
// and serves real pods through injected native sidecars; the tests speak HTTP
// from the host to the pods' and Services' addresses on the node's own bridge.
//
// Run through `make e2e` (hack/e2e.sh), which brings the node up, sets
// KEYGATE_E2E_KUBECONFIG and tears the node down afterwards. The build tag
// keeps these tests out of `go test ./...`.
package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

const (
	release         = "keygate"
	systemNamespace = "keygate-system"
	namespace       = "e2e"       // the user namespace of the workloads
	otherNamespace  = "e2e-other" // outside watchNamespaces (issue 17 item 1)
	managerName     = "keygate-manager"
	leaseName       = "keygate-manager.keygate.dev"
	webhookName     = "inject.keygate.dev"
	imageTag        = "v0.1.0"
	demoImage       = "keygate/demo-upstream:" + imageTag

	// Bounds of every wait; the figures, not these, say how fast things are.
	timeout  = 3 * time.Minute
	interval = 100 * time.Millisecond
)

var suite struct {
	root       string // the repository
	kubeconfig string
	kubectl    string
	helm       string
	helmHome   string
	k8s        client.Client

	mu      sync.Mutex
	figures []string
}

// figure records a measurement printed at the end of the run.
func figure(name, format string, args ...any) {
	suite.mu.Lock()
	defer suite.mu.Unlock()
	suite.figures = append(suite.figures, fmt.Sprintf("  %-44s %s", name, fmt.Sprintf(format, args...)))
}

func seconds(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	suite.kubeconfig = os.Getenv("KEYGATE_E2E_KUBECONFIG")
	if suite.kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "test/node needs a real node: run `make e2e` (hack/e2e.sh sets KEYGATE_E2E_KUBECONFIG)")
		return 2
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	suite.root = filepath.Clean(filepath.Join(wd, "..", ".."))
	suite.kubectl = filepath.Join(suite.root, "bin", "node", "kubectl")
	suite.helm = filepath.Join(suite.root, "bin", "helm")
	suite.helmHome, err = os.MkdirTemp("", "keygate-e2e-helm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(suite.helmHome) }()

	cfg, err := clientcmd.BuildConfigFromFlags("", suite.kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeconfig:", err)
		return 1
	}
	cfg.QPS, cfg.Burst = 50, 100
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, keygatev1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	suite.k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	if up := os.Getenv("KEYGATE_E2E_NODE_UP_SECONDS"); up != "" {
		figure("node up (built binaries)", "%s s", up)
	}

	code := m.Run()

	fmt.Printf("\n=== keygate on a real node: figures\n%s\n", strings.Join(suite.figures, "\n"))
	return code
}
