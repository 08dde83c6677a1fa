// Package servingcert is the sidecar's serving key pair: read from
// --tls-cert-file and --tls-key-file and reloaded when they change
// (controller-runtime's certwatcher: file events plus a poll), so a renewed
// certificate (cert-manager, a rotated Secret) takes effect for new
// handshakes while open connections carry on. A pair that fails to load
// keeps the last good one in force; Err reports the failure until a good
// pair loads again.
package servingcert

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// DefaultInterval is how often the files are read again besides file events
// (Secret volumes are updated by an atomic symlink swap, which file events
// see; the poll is the safety net).
const DefaultInterval = 10 * time.Second

// Source serves the current key pair.
type Source struct {
	certFile, keyFile string
	interval          time.Duration
	cw                *certwatcher.CertWatcher

	mu  sync.Mutex
	err error
}

// New reads the pair once: a missing or invalid pair at start is an error.
func New(certFile, keyFile string, interval time.Duration) (*Source, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("both a certificate file and a key file are required")
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	cw, err := certwatcher.New(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	return &Source{certFile: certFile, keyFile: keyFile, interval: interval, cw: cw.WithWatchInterval(interval)}, nil
}

// Start watches the files until ctx ends.
func (s *Source) Start(ctx context.Context) error {
	go s.check(ctx)
	return s.cw.Start(ctx)
}

// check records whether the pair on disk loads, for Err: certwatcher only
// logs a refused pair.
func (s *Source) check(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
		if err == nil {
			// A good pair on disk: make sure it is the one served before
			// clearing the error (the watcher may not have read it yet).
			err = s.cw.ReadCertificate()
		}
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
	}
}

// Err is the reason the pair on disk was last refused (the previous pair
// stays in force), or nil.
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// GetCertificate is tls.Config's GetCertificate.
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cw.GetCertificate(hello)
}

// TLSConfig is the listener's configuration: TLS 1.2 at least, Go's default
// cipher suites (modern AEAD suites only for TLS 1.2, all of TLS 1.3's),
// ALPN h2 and http/1.1, the current pair on every handshake.
func (s *Source) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: s.GetCertificate,
	}
}

// Collector exports keygate_sidecar_tls_keypair_refused (1 while the pair on
// disk is refused and the previous one serves) and
// keygate_sidecar_tls_certificate_expiry_timestamp_seconds.
func (s *Source) Collector() prometheus.Collector {
	return collector{s}
}

var (
	refusedDesc = prometheus.NewDesc("keygate_sidecar_tls_keypair_refused",
		"1 while the TLS key pair on disk fails to load (the last good pair keeps serving).", nil, nil)
	expiryDesc = prometheus.NewDesc("keygate_sidecar_tls_certificate_expiry_timestamp_seconds",
		"Expiry (Unix seconds) of the serving certificate in force.", nil, nil)
)

type collector struct{ s *Source }

func (c collector) Describe(ch chan<- *prometheus.Desc) { ch <- refusedDesc; ch <- expiryDesc }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	refused := 0.0
	if c.s.Err() != nil {
		refused = 1
	}
	ch <- prometheus.MustNewConstMetric(refusedDesc, prometheus.GaugeValue, refused)
	if cert, _ := c.s.cw.GetCertificate(nil); cert != nil && cert.Leaf != nil {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(cert.Leaf.NotAfter.Unix()))
	}
}
