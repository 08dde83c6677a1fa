// Package podinject is keygate's sidecar injection: a mutating admission
// webhook that adds the keygate sidecar, as a native sidecar, to pods labelled
// keygate.dev/inject=true. inject (pure, idempotent) does the work; Handler
// decodes, calls it and patches; Setup wires the handler, the webhook
// certificate, the sidecars' RBAC and the metrics into a manager.
package podinject

import (
	"errors"
	"fmt"
	"net/http"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/keygate-dev/keygate/controllers/sidecaraccess"
	"github.com/keygate-dev/keygate/controllers/webhookcert"
)

// ReadyzCheckName is the name of the readiness check Setup adds.
const ReadyzCheckName = "webhook"

// Setup adds injection to mgr: the admission handler at WebhookPath on the
// manager's webhook server (give the manager opts.WebhookServer()), the
// webhook certificate (opts.CertMode), the sidecar RBAC reconciler, the
// metrics, and a readiness check (ReadyzCheckName) that passes once the
// webhook server runs with a valid certificate.
func Setup(mgr ctrl.Manager, opts *Options) error {
	opts.setDefaults()
	if opts.CertMode == webhookcert.ModeSelfSigned && !opts.serverMade {
		return errors.New("injection: create the manager with ctrl.Options{WebhookServer: opts.WebhookServer()} so that it serves the rotated certificate")
	}
	cfg, err := opts.config()
	if err != nil {
		return fmt.Errorf("injection options: %w", err)
	}

	certOpts := webhookcert.Options{
		Mode:              opts.CertMode,
		CertDir:           opts.CertDir,
		Secret:            types.NamespacedName{Namespace: opts.Namespace, Name: opts.CertSecretName},
		DNSName:           fmt.Sprintf("%s.%s.svc", opts.ServiceName, opts.Namespace),
		WebhookConfigName: opts.WebhookConfigName,
		Holder:            opts.holder,
	}
	if opts.CertOptions != nil {
		opts.CertOptions(&certOpts)
	}
	certReady, err := webhookcert.Setup(mgr, certOpts)
	if err != nil {
		return err
	}

	server := mgr.GetWebhookServer()
	server.Register(WebhookPath, closeAfterAnswer(&webhook.Admission{Handler: &Handler{
		Config:     cfg,
		Policies:   mgr.GetAPIReader(),
		Decoder:    admission.NewDecoder(mgr.GetScheme()),
		Namespaces: opts.Namespaces,
		observe:    opts.observe,
	}}))
	started := server.StartedChecker()
	if err := mgr.AddReadyzCheck(ReadyzCheckName, func(req *http.Request) error {
		if err := certReady(req); err != nil {
			return err
		}
		return started(req)
	}); err != nil {
		return fmt.Errorf("add webhook readiness check: %w", err)
	}

	podCache, err := sidecaraccess.NewCache(mgr, opts.Namespaces)
	if err != nil {
		return err
	}
	access := &sidecaraccess.Reconciler{Client: mgr.GetClient(), Cache: podCache, Scheme: mgr.GetScheme()}
	if err := access.SetupWithManager(mgr, podCache); err != nil {
		return err
	}
	if err := metrics.Registry.Register(uninjectedPods(podCache, opts.excludedNamespaces())); err != nil {
		return fmt.Errorf("register uninjected pods gauge: %w", err)
	}
	return nil
}

// closeAfterAnswer answers each admission on a connection of its own
// (Connection: close). The API server otherwise keeps connections to a
// manager pod open while the pod shuts down, and a request sent on one just
// as the server closes it fails with EOF (seen on a real node during helm
// upgrade). New connections go through the Service to Ready pods only.
func closeAfterAnswer(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		h.ServeHTTP(w, r)
	})
}
