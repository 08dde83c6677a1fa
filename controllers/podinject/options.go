package podinject

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/keygate-dev/keygate/controllers/webhookcert"
)

// Defaults of the manager flags BindFlags registers.
const (
	DefaultWebhookConfigName = "keygate-sidecar-injector"
	DefaultServiceName       = "keygate-webhook-service"
	DefaultNamespace         = "keygate-system"
	DefaultCertSecretName    = "keygate-webhook-cert"
	DefaultCertDir           = "/tmp/k8s-webhook-server/serving-certs"
	DefaultWebhookPort       = 9443
	// WebhookPath is where the handler is served.
	WebhookPath = "/mutate-v1-pod"
)

// Options configure injection; BindFlags fills them from the manager's flags.
type Options struct {
	// Image is the sidecar image (pinned tag).
	Image string
	// Version is recorded in keygate.dev/injected.
	Version string
	// CPURequest, MemoryRequest, CPULimit, MemoryLimit are the sidecar's
	// default resources (Kubernetes quantities; empty leaves one unset).
	CPURequest, MemoryRequest, CPULimit, MemoryLimit string

	// CertMode is webhookcert.ModeSelfSigned (default) or webhookcert.ModeCertManager.
	CertMode string
	// CertDir is the webhook server's certificate directory.
	CertDir string
	// CertSecretName is the Secret holding the webhook's CA and certificate.
	CertSecretName string
	// WebhookConfigName is the MutatingWebhookConfiguration's name.
	WebhookConfigName string
	// ServiceName and Namespace are the webhook Service and the manager's
	// namespace (also the certificate Secret's); the certificate is for
	// <ServiceName>.<Namespace>.svc.
	ServiceName, Namespace string
	// Port is the webhook server's port (0: any free port, chosen at bind time).
	Port int
	// Host is the address the webhook server binds; empty binds every address.
	Host string

	// Namespaces, when set, limits the pods and RBAC objects watched (give it
	// the manager's --watch-namespaces). Empty watches every namespace.
	Namespaces []string
	// CertOptions, when set, adjusts the certificate options (tests use it
	// for a short rotation period or another DNS name).
	CertOptions func(*webhookcert.Options)

	holder *webhookcert.Holder
	// serverMade records that WebhookServer was called.
	serverMade bool
	// observe, when set, sees every admission and its result (tests).
	observe func(req admission.Request, result string)
}

// BindFlags registers the injection flags on fs with their defaults.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = DefaultNamespace
	}
	fs.StringVar(&o.Image, "sidecar-image", DefaultImage, "Image of the injected keygate sidecar (a pinned tag).")
	fs.StringVar(&o.Version, "injector-version", DefaultVersion, "Version recorded in the keygate.dev/injected annotation of injected pods.")
	fs.StringVar(&o.CPURequest, "sidecar-cpu-request", "50m", "Default CPU request of the sidecar (pods may override with keygate.dev/sidecar-cpu-request).")
	fs.StringVar(&o.MemoryRequest, "sidecar-memory-request", "64Mi", "Default memory request of the sidecar (keygate.dev/sidecar-memory-request).")
	fs.StringVar(&o.CPULimit, "sidecar-cpu-limit", "", "Default CPU limit of the sidecar; empty sets none (keygate.dev/sidecar-cpu-limit).")
	fs.StringVar(&o.MemoryLimit, "sidecar-memory-limit", "128Mi", "Default memory limit of the sidecar (keygate.dev/sidecar-memory-limit).")
	fs.StringVar(&o.CertMode, "webhook-cert-mode", webhookcert.ModeSelfSigned, "Webhook certificates: self-signed (the manager makes and rotates them) or cert-manager (a mounted cert-manager Secret).")
	fs.StringVar(&o.CertDir, "webhook-cert-dir", DefaultCertDir, "Directory of the webhook serving certificate (tls.crt, tls.key).")
	fs.StringVar(&o.CertSecretName, "webhook-cert-secret", DefaultCertSecretName, "Secret, in the manager's namespace, holding the self-signed webhook CA and certificate.")
	fs.StringVar(&o.WebhookConfigName, "webhook-config-name", DefaultWebhookConfigName, "Name of the MutatingWebhookConfiguration whose caBundle the manager keeps in sync.")
	fs.StringVar(&o.ServiceName, "webhook-service-name", DefaultServiceName, "Name of the Service in front of the webhook server.")
	fs.StringVar(&o.Namespace, "webhook-service-namespace", ns, "Namespace of the manager and its webhook Service (default $POD_NAMESPACE or keygate-system).")
	fs.IntVar(&o.Port, "webhook-port", DefaultWebhookPort, "Port the webhook server listens on (0: any free port, logged at start).")
	fs.StringVar(&o.Host, "webhook-host", "", "Address the webhook server binds; empty binds every address.")
}

// setDefaults fills what BindFlags would for Options built in code.
func (o *Options) setDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.Image, DefaultImage)
	def(&o.Version, DefaultVersion)
	def(&o.CertMode, webhookcert.ModeSelfSigned)
	def(&o.CertDir, DefaultCertDir)
	def(&o.CertSecretName, DefaultCertSecretName)
	def(&o.WebhookConfigName, DefaultWebhookConfigName)
	def(&o.ServiceName, DefaultServiceName)
	def(&o.Namespace, DefaultNamespace)
	if o.holder == nil {
		o.holder = webhookcert.NewHolder()
	}
}

// WebhookServer is the webhook server to give the manager
// (ctrl.Options.WebhookServer): it listens on Host:Port (port 0: a port the
// kernel picks, logged as "starting server" name "webhook") and, in
// self-signed mode, serves the certificate the rotator keeps, reloading it
// the moment it changes.
func (o *Options) WebhookServer() webhook.Server {
	o.setDefaults()
	o.serverMade = true
	if o.CertMode == webhookcert.ModeSelfSigned {
		return newWebhookServer(o.Host, o.Port, o.CertDir, o.holder.TLSOpt)
	}
	return newWebhookServer(o.Host, o.Port, o.CertDir)
}

// config validates the options and returns inject's Config; every problem is
// reported at once.
func (o *Options) config() (Config, error) {
	var errs []error
	cfg := Config{Image: o.Image, Version: o.Version}
	if o.Image == "" || strings.HasSuffix(o.Image, ":latest") || !strings.ContainsAny(o.Image, ":@") {
		errs = append(errs, fmt.Errorf("--sidecar-image %q: want a pinned tag or digest", o.Image))
	}
	if o.Version == "" {
		errs = append(errs, errors.New("--injector-version is empty"))
	}
	set := func(flagName, v string, list *corev1.ResourceList, name corev1.ResourceName) {
		if v == "" {
			return
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() <= 0 {
			errs = append(errs, fmt.Errorf("--%s %q: not a positive quantity", flagName, v))
			return
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[name] = q
	}
	set("sidecar-cpu-request", o.CPURequest, &cfg.Resources.Requests, corev1.ResourceCPU)
	set("sidecar-memory-request", o.MemoryRequest, &cfg.Resources.Requests, corev1.ResourceMemory)
	set("sidecar-cpu-limit", o.CPULimit, &cfg.Resources.Limits, corev1.ResourceCPU)
	set("sidecar-memory-limit", o.MemoryLimit, &cfg.Resources.Limits, corev1.ResourceMemory)
	for name, req := range cfg.Resources.Requests {
		if lim, ok := cfg.Resources.Limits[name]; ok && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("sidecar %s request %s exceeds its limit %s", name, req.String(), lim.String()))
		}
	}
	return cfg, errors.Join(errs...)
}

// excludedNamespaces are never injected: the namespaceSelector of the webhook
// configuration leaves them out, and the uninjected-pods gauge ignores them.
func (o *Options) excludedNamespaces() map[string]bool {
	return map[string]bool{"kube-system": true, "kube-public": true, o.Namespace: true}
}
