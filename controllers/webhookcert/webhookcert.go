// Package webhookcert gives the injection webhook its serving certificate.
//
// In the default mode (self-signed) open-policy-agent's cert-controller keeps a
// CA and a serving certificate in a Secret, renews them before they expire,
// and keeps the caBundle of the MutatingWebhookConfiguration in sync; a small
// writer copies the Secret's certificate into the webhook server's cert
// directory as soon as it changes (no volume mount, so no kubelet sync delay),
// and controller-runtime's certificate watcher reloads it without a restart.
// In cert-manager mode a cert-manager Certificate fills the Secret, its
// cainjector sets the caBundle, and the Secret is mounted on the cert
// directory; this package then only reports readiness.
package webhookcert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Modes of Options.Mode.
const (
	// ModeSelfSigned: the manager makes and rotates its own CA and certificate.
	ModeSelfSigned = "self-signed"
	// ModeCertManager: a cert-manager-issued Secret is mounted on the cert directory.
	ModeCertManager = "cert-manager"
)

// File names in the cert directory (controller-runtime's defaults).
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// Options configure the serving certificate.
type Options struct {
	// Mode is ModeSelfSigned or ModeCertManager.
	Mode string
	// CertDir is the webhook server's certificate directory.
	CertDir string
	// Secret holds the CA and serving certificate (self-signed mode).
	Secret types.NamespacedName
	// DNSName is the name the API server dials: <service>.<namespace>.svc.
	DNSName string
	// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle is kept in sync.
	WebhookConfigName string
	// Holder, in self-signed mode, receives every new key pair at once; give
	// the webhook server its TLSOpt. Without it the server reads CertDir
	// through its file watcher (which notices changes within 10 seconds).
	Holder *Holder

	// ServerCertDuration, LookaheadInterval and RotationCheckFrequency tune
	// rotation; zero keeps cert-controller's defaults (1 year, renewed 90 days
	// before expiry, checked every 12 hours). CACertDuration defaults to 10 years.
	ServerCertDuration     time.Duration
	LookaheadInterval      time.Duration
	RotationCheckFrequency time.Duration
	CACertDuration         time.Duration
}

// Setup adds what Options.Mode needs to mgr and returns the readiness check
// of the webhook: it passes only once a certificate that is valid now is in
// CertDir (and, in self-signed mode, its CA is in the webhook's caBundle).
func Setup(mgr ctrl.Manager, opts Options) (healthz.Checker, error) {
	switch opts.Mode {
	case ModeCertManager:
		return func(*http.Request) error { return checkCertDir(opts.CertDir) }, nil
	case ModeSelfSigned:
	default:
		return nil, fmt.Errorf("unknown webhook certificate mode %q (want %s or %s)", opts.Mode, ModeSelfSigned, ModeCertManager)
	}
	if opts.Secret.Name == "" || opts.Secret.Namespace == "" || opts.DNSName == "" || opts.WebhookConfigName == "" || opts.CertDir == "" {
		return nil, errors.New("webhook certificate: secret, DNS name, webhook configuration name and cert directory are required")
	}
	ready := make(chan struct{})
	cr := &rotator.CertRotator{
		SecretKey:              opts.Secret,
		CertDir:                opts.CertDir,
		CAName:                 "keygate-webhook-ca",
		CAOrganization:         "keygate",
		DNSName:                opts.DNSName,
		IsReady:                ready,
		Webhooks:               []rotator.WebhookInfo{{Name: opts.WebhookConfigName, Type: rotator.Mutating}},
		FieldOwner:             "keygate-webhookcert",
		RestartOnSecretRefresh: false, // the writer and the cert watcher reload in place
		RequireLeaderElection:  false, // every replica serves, so every replica needs the certificate
		ServerCertDuration:     opts.ServerCertDuration,
		LookaheadInterval:      opts.LookaheadInterval,
		RotationCheckFrequency: opts.RotationCheckFrequency,
		CaCertDuration:         opts.CACertDuration,
		ControllerName:         "keygate-webhookcert",
	}
	if err := rotator.AddRotator(mgr, cr); err != nil { // also fills in cr's defaults
		return nil, fmt.Errorf("add certificate rotator: %w", err)
	}
	if err := seedSecret(mgr, cr); err != nil {
		return nil, err
	}
	if err := addCertDirWriter(mgr, opts); err != nil {
		return nil, err
	}
	return func(*http.Request) error {
		select {
		case <-ready:
		default:
			return errors.New("webhook certificate not ready yet")
		}
		return checkCertDir(opts.CertDir)
	}, nil
}

// seedSecret makes sure the certificate Secret holds a CA and a serving
// certificate before the rotator starts: it creates the Secret filled, or
// fills an empty one (the chart and config/ create it empty). Replicas
// starting together race here, not in the rotator: a create or update is
// atomic, the loser sees the winner's certificate and keeps it. Without this
// every fresh start logged the rotator's conflicts and "missing ca.crt".
func seedSecret(mgr ctrl.Manager, cr *rotator.CertRotator) error {
	c, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := cr.SecretKey
	for attempt := 0; ; attempt++ {
		s := &corev1.Secret{}
		err := c.Get(ctx, key, s)
		switch {
		case apierrors.IsNotFound(err):
			s = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{
					Name: key.Name, Namespace: key.Namespace,
					Labels: map[string]string{keygatev1.LabelManagedBy: keygatev1.ManagedByValue},
				},
				Type: corev1.SecretTypeOpaque,
			}
			if s.Data, err = newCertData(cr); err != nil {
				return err
			}
			err = c.Create(ctx, s)
		case err != nil:
			return fmt.Errorf("read webhook certificate Secret %s: %w", key, err)
		case len(s.Data[caCertKey]) > 0:
			return nil // filled (by another replica, or an earlier run): the rotator checks and renews it
		default:
			if s.Data, err = newCertData(cr); err != nil {
				return err
			}
			err = c.Update(ctx, s)
		}
		switch {
		case err == nil:
			return nil
		case (apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err)) && attempt < 5:
			continue // another replica was first: read what it wrote
		default:
			return fmt.Errorf("write webhook certificate Secret %s: %w", key, err)
		}
	}
}

// Keys of the certificate Secret, as cert-controller's rotator reads them.
const (
	caCertKey = "ca.crt"
	caKeyKey  = "ca.key"
)

// newCertData makes a CA and a serving certificate signed by it with the
// rotator's own settings, so the rotator accepts them as they are.
func newCertData(cr *rotator.CertRotator) (map[string][]byte, error) {
	now := time.Now()
	begin := now.Add(-time.Hour) // as the rotator does: tolerate clock skew
	ca, err := cr.CreateCACert(begin, now.Add(cr.CaCertDuration))
	if err != nil {
		return nil, fmt.Errorf("create webhook CA: %w", err)
	}
	cert, key, err := cr.CreateCertPEM(ca, begin, now.Add(cr.ServerCertDuration))
	if err != nil {
		return nil, fmt.Errorf("create webhook serving certificate: %w", err)
	}
	return map[string][]byte{caCertKey: ca.CertPEM, caKeyKey: ca.KeyPEM, cr.CertName: cert, cr.KeyName: key}, nil
}

// checkCertDir tells whether CertDir holds a key pair whose certificate is valid now.
func checkCertDir(dir string) error {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return fmt.Errorf("webhook certificate not loaded: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("webhook certificate unreadable: %w", err)
	}
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return fmt.Errorf("webhook certificate not valid now (valid %s to %s)", leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// writeFileAtomic replaces path with data through a rename, so a reader sees
// the old or the new file, never a half-written one.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close() //nolint:errcheck,gosec // the write error is the one to report
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close() //nolint:errcheck,gosec // the chmod error is the one to report
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
