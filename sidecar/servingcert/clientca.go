package servingcert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ClientCAs are the certificate authorities client certificates must chain
// to (--tls-client-ca-file, a PEM bundle), read again on file events and
// every interval: a changed file takes effect for the next handshake. A file that fails to
// read or holds no CA certificate keeps the last good set in force; Err
// reports the failure until a good file loads again.
type ClientCAs struct {
	file     string
	interval time.Duration

	mu   sync.Mutex
	pool *x509.CertPool
	last []byte
	err  error
}

// NewClientCAs reads the file once: a missing or invalid file at start is an
// error.
func NewClientCAs(file string, interval time.Duration) (*ClientCAs, error) {
	if file == "" {
		return nil, errors.New("a client CA file is required")
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	c := &ClientCAs{file: file, interval: interval}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// parseCAs reads the CA certificates of a PEM bundle; anything else in it
// (or no certificate at all) is an error.
func parseCAs(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("not PEM")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no CA certificate")
	}
	return pool, nil
}

// reload reads the file; an unchanged file is not parsed again.
func (c *ClientCAs) reload() error {
	data, err := os.ReadFile(c.file)
	var pool *x509.CertPool
	if err == nil {
		c.mu.Lock()
		same := c.pool != nil && bytes.Equal(data, c.last)
		c.mu.Unlock()
		if same {
			c.setErr(nil)
			return nil
		}
		pool, err = parseCAs(data)
	}
	if err != nil {
		err = fmt.Errorf("load client CA file %s: %w", c.file, err)
		c.setErr(err)
		return err
	}
	c.mu.Lock()
	c.pool, c.last, c.err = pool, data, nil
	c.mu.Unlock()
	return nil
}

func (c *ClientCAs) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// Start reads the file again on every file event in its directory (a
// ConfigMap volume swaps a symlink there, an editor renames over the file)
// and every interval besides, until ctx ends. Without file events (the
// watcher failed to start) the poll alone keeps it current.
func (c *ClientCAs) Start(ctx context.Context) error {
	watchFiles(ctx, c.interval, func() { _ = c.reload() }, c.file) // kept in Err
	return nil
}

// Err is the reason the file on disk was last refused (the previous CAs stay
// in force), or nil.
func (c *ClientCAs) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Pool is the set of CAs in force.
func (c *ClientCAs) Pool() *x509.CertPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pool
}

// Require makes cfg require a client certificate that chains to the CAs in
// force at each handshake (tls.RequireAndVerifyClientCert): a client without
// one, or with another CA's, fails the handshake.
func (c *ClientCAs) Require(cfg *tls.Config) {
	base := cfg.Clone()
	base.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = c.Pool()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		hc := base.Clone()
		hc.ClientCAs = c.Pool()
		return hc, nil
	}
}

// Collector exports keygate_sidecar_tls_client_ca_refused (1 while the file
// on disk is refused and the previous CAs are in force).
func (c *ClientCAs) Collector() prometheus.Collector {
	return caCollector{c}
}

var caRefusedDesc = prometheus.NewDesc("keygate_sidecar_tls_client_ca_refused",
	"1 while the client CA file on disk fails to load (the last good CAs stay in force).", nil, nil)

type caCollector struct{ c *ClientCAs }

func (k caCollector) Describe(ch chan<- *prometheus.Desc) { ch <- caRefusedDesc }

func (k caCollector) Collect(ch chan<- prometheus.Metric) {
	refused := 0.0
	if k.c.Err() != nil {
		refused = 1
	}
	ch <- prometheus.MustNewConstMetric(caRefusedDesc, prometheus.GaugeValue, refused)
}
