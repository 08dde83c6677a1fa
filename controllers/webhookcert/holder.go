package webhookcert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync/atomic"
)

// Holder serves the current key pair to the webhook server's TLS handshakes.
// In self-signed mode the cert directory writer replaces the pair the moment
// the Secret changes, so a rotation takes effect without a restart and
// without waiting for a file watcher. Before the first pair arrives every
// handshake fails, so the API server's call fails and the pod is refused
// (failurePolicy: Fail), never let through.
type Holder struct {
	pair atomic.Pointer[tls.Certificate]
}

// NewHolder returns an empty Holder.
func NewHolder() *Holder { return &Holder{} }

// Set replaces the served key pair with the PEM-encoded cert and key.
func (h *Holder) Set(certPEM, keyPEM []byte) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	pair.Leaf = leaf
	h.pair.Store(&pair)
	return nil
}

// Current returns the served certificate, nil before the first Set.
func (h *Holder) Current() *x509.Certificate {
	if p := h.pair.Load(); p != nil {
		return p.Leaf
	}
	return nil
}

// GetCertificate is a tls.Config.GetCertificate.
func (h *Holder) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if p := h.pair.Load(); p != nil {
		return p, nil
	}
	return nil, errors.New("no webhook serving certificate yet")
}

// TLSOpt makes a webhook server serve the Holder's certificate.
func (h *Holder) TLSOpt(cfg *tls.Config) { cfg.GetCertificate = h.GetCertificate }
