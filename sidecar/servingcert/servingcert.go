// Package servingcert is the sidecar's serving key pair: read from
// --tls-cert-file and --tls-key-file and reloaded when they change
// (file events plus a poll), so a renewed
// certificate (cert-manager, a rotated Secret) takes effect for new
// handshakes while open connections carry on. A pair that fails to load
// keeps the last good one in force; Err reports the failure until a good
// pair loads again.
package servingcert

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultInterval is how often the files are read again besides file events
// (Secret volumes are updated by an atomic symlink swap, which file events
// see; the poll is the safety net).
const DefaultInterval = 10 * time.Second

// Source serves the current key pair.
type Source struct {
	certFile, keyFile string
	interval          time.Duration
	pair              atomic.Pointer[tls.Certificate]

	mu  sync.Mutex
	sum [sha256.Size]byte // of the files of the pair in force
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
	s := &Source{certFile: certFile, keyFile: keyFile, interval: interval}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// reload reads both files; an unchanged pair is not parsed again. A pair
// that fails to load leaves the one in force and is reported by Err.
func (s *Source) reload() error {
	cert, err := os.ReadFile(s.certFile)
	var key []byte
	if err == nil {
		key, err = os.ReadFile(s.keyFile)
	}
	if err == nil {
		h := sha256.New()
		_, _ = h.Write(cert)
		_, _ = h.Write(key)
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		s.mu.Lock()
		same := s.pair.Load() != nil && sum == s.sum
		s.mu.Unlock()
		if same {
			s.setErr(nil)
			return nil
		}
		var pair tls.Certificate
		if pair, err = tls.X509KeyPair(cert, key); err == nil { // Leaf set (Go 1.23+)
			s.mu.Lock()
			s.pair.Store(&pair)
			s.sum, s.err = sum, nil
			s.mu.Unlock()
			return nil
		}
	}
	err = fmt.Errorf("load TLS key pair %s, %s: %w", s.certFile, s.keyFile, err)
	s.setErr(err)
	return err
}

func (s *Source) setErr(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

// Start reads the pair again on file events in the files' directories (a
// Secret volume swaps a symlink there) and every interval besides, until ctx
// ends.
func (s *Source) Start(ctx context.Context) error {
	watchFiles(ctx, s.interval, func() { _ = s.reload() }, s.certFile, s.keyFile)
	return nil
}

// Err is the reason the pair on disk was last refused (the previous pair
// stays in force), or nil.
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// GetCertificate is tls.Config's GetCertificate.
func (s *Source) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.pair.Load(), nil
}

// watchFiles calls reload on every file event in the directories of files
// and every interval besides, until ctx ends. Without file events (the
// watcher failed to start) the poll alone keeps them current.
func watchFiles(ctx context.Context, interval time.Duration, reload func(), files ...string) {
	var events chan fsnotify.Event
	var errs chan error
	if w, err := fsnotify.NewWatcher(); err == nil {
		defer func() { _ = w.Close() }()
		added := 0
		for _, f := range files {
			if w.Add(filepath.Dir(f)) == nil {
				added++
			}
		}
		if added == len(files) {
			events, errs = w.Events, w.Errors
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
		case err := <-errs:
			_ = err // events were lost: read the files anyway
		case <-t.C:
		}
		reload()
	}
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
	if cert := c.s.pair.Load(); cert != nil && cert.Leaf != nil {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(cert.Leaf.NotAfter.Unix()))
	}
}
