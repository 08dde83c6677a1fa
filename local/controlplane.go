package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers/podinject"
)

// controlPlane is a real kube-apiserver and etcd (controller-runtime's
// envtest, binaries from bin/k8s) with keygate's CRDs and its injection
// webhook configuration installed, the webhook pointed at
// https://localhost:<port> with a CA envtest made.
type controlPlane struct {
	env    *envtest.Environment
	cfg    *rest.Config
	client client.Client
	scheme *runtime.Scheme
}

// startControlPlane starts the API server and etcd and installs the CRDs of
// configDir/crd/bases and the webhook configuration of configDir/webhook.
func startControlPlane(assetsDir, configDir string) (*controlPlane, error) {
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assetsDir, bin)); err != nil {
			return nil, fmt.Errorf("%s is missing from %s (make envtest builds it): %w", bin, assetsDir, err)
		}
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := keygatev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	existing := false
	env := &envtest.Environment{
		Scheme:                scheme,
		BinaryAssetsDirectory: assetsDir,
		UseExistingCluster:    &existing,
		CRDDirectoryPaths:     []string{filepath.Join(configDir, "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			// The real manifest (selectors, failure policy, timeout), its
			// Service reference replaced by https://localhost:<port>.
			Paths:                        []string{filepath.Join(configDir, "webhook")},
			LocalServingHostExternalName: "localhost",
			LocalServingHost:             "127.0.0.1",
		},
		// The API server waits for open watches on SIGTERM; do not wait long.
		ControlPlaneStopTimeout: 5 * time.Second,
	}
	if os.Getenv("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT") == "" {
		// envtest's default, 20 s, is too short for a busy 2-core machine.
		env.ControlPlaneStartTimeout = 2 * time.Minute
	}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", assetsDir, err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("API client: %w", err)
	}
	return &controlPlane{env: env, cfg: cfg, client: c, scheme: scheme}, nil
}

// stop stops the API server and etcd and removes their directories.
func (cp *controlPlane) stop() error {
	// Read before Stop: envtest forgets the directories it made when it stops.
	var dirs []string
	if e := cp.env.ControlPlane.Etcd; e != nil {
		dirs = append(dirs, e.DataDir)
	}
	if a := cp.env.ControlPlane.APIServer; a != nil {
		dirs = append(dirs, a.CertDir)
	}
	err := cp.env.Stop()
	// A process that outlives the stop timeout is killed and its directory
	// removed at once, racing its last writes: remove again until gone.
	return errors.Join(err, removeAll(dirs, dirRemoveTimeout))
}

// dirRemoveTimeout bounds removing the control plane's directories.
const dirRemoveTimeout = 10 * time.Second

// removeAll removes each directory, retrying while files still appear in it.
func removeAll(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		for {
			err := os.RemoveAll(dir)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("remove %s: %w", dir, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// webhookHost is the address the manager's webhook server binds, and
// webhookCertDir holds the serving certificate envtest made for it.
func (cp *controlPlane) webhookHost() string { return cp.env.WebhookInstallOptions.LocalServingHost }
func (cp *controlPlane) webhookCertDir() string {
	return cp.env.WebhookInstallOptions.LocalServingCertDir
}

// pointWebhookAt sets the port of the injection webhook's URL (installed by
// envtest with a port of its own choosing) to the port the manager bound, by
// a JSON patch of that one field.
func (cp *controlPlane) pointWebhookAt(ctx context.Context, port int) error {
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := cp.client.Get(ctx, client.ObjectKey{Name: podinject.DefaultWebhookConfigName}, wh); err != nil {
		return fmt.Errorf("webhook configuration: %w", err)
	}
	var ops []string
	for i, w := range wh.Webhooks {
		if w.ClientConfig.URL == nil {
			continue
		}
		u, err := url.Parse(*w.ClientConfig.URL)
		if err != nil {
			return fmt.Errorf("webhook %s URL: %w", w.Name, err)
		}
		u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(port))
		ops = append(ops, fmt.Sprintf(`{"op":"replace","path":"/webhooks/%d/clientConfig/url","value":%q}`, i, u.String()))
	}
	if len(ops) == 0 {
		return fmt.Errorf("webhook configuration %s has no URL to point at port %d", wh.Name, port)
	}
	patch := client.RawPatch(types.JSONPatchType, []byte("["+strings.Join(ops, ",")+"]"))
	if err := cp.client.Patch(ctx, wh, patch); err != nil {
		return fmt.Errorf("point the webhook at port %d: %w", port, err)
	}
	return nil
}

// addUser returns a kubeconfig and a client config for a user authenticated
// by a client certificate with that user name (and no groups).
func (cp *controlPlane) addUser(name string) ([]byte, *rest.Config, error) {
	u, err := cp.env.AddUser(envtest.User{Name: name}, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("user %s: %w", name, err)
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig of %s: %w", name, err)
	}
	return kc, u.Config(), nil
}

// writeAdminKubeconfig writes a kubeconfig for the API server's admin, with
// the context "keygate-local" and namespace as its default namespace.
func (cp *controlPlane) writeAdminKubeconfig(path, namespace string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["keygate-local"] = &clientcmdapi.Cluster{Server: cp.cfg.Host, CertificateAuthorityData: cp.cfg.CAData}
	kc.AuthInfos["keygate-local-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cp.cfg.CertData, ClientKeyData: cp.cfg.KeyData}
	kc.Contexts["keygate-local"] = &clientcmdapi.Context{Cluster: "keygate-local", AuthInfo: "keygate-local-admin", Namespace: namespace}
	kc.CurrentContext = "keygate-local"
	return clientcmd.WriteToFile(*kc, path)
}
