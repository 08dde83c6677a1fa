package podinject

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
)

// webhookServer is the manager's webhook server. Registration and the
// instrumented mux are controller-runtime's (webhook.DefaultServer); only the
// listener is keygate's: DefaultServer binds host:port itself, turns port 0
// into 9443 and its readiness check dials the configured port, so the bound
// address could not be learned. Here the port may be 0 (tests: the kernel
// picks a free port at bind time, nothing is picked first and bound later),
// the bound address is logged ("starting server", name "webhook", addr) and
// the readiness check dials the address actually bound.
type webhookServer struct {
	webhook.Server // Register, WebhookMux (with controller-runtime's webhook metrics)

	host    string
	port    int
	certDir string
	tlsOpts []func(*tls.Config)

	mu   sync.Mutex
	addr string // bound address, once Start has listened
}

func newWebhookServer(host string, port int, certDir string, tlsOpts ...func(*tls.Config)) *webhookServer {
	return &webhookServer{
		Server:  webhook.NewServer(webhook.Options{Host: host, Port: port, CertDir: certDir}),
		host:    host,
		port:    port,
		certDir: certDir,
		tlsOpts: tlsOpts,
	}
}

// Start listens on host:port with TLS and serves the webhooks until ctx ends.
func (s *webhookServer) Start(ctx context.Context) error {
	cfg := &tls.Config{NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
	for _, opt := range s.tlsOpts {
		opt(cfg)
	}
	if cfg.GetCertificate == nil { // certificates mounted in certDir (cert-manager)
		w, err := certwatcher.New(filepath.Join(s.certDir, "tls.crt"), filepath.Join(s.certDir, "tls.key"))
		if err != nil {
			return fmt.Errorf("webhook certificate: %w", err)
		}
		cfg.GetCertificate = w.GetCertificate
		go func() {
			if err := w.Start(ctx); err != nil {
				logf.FromContext(ctx).Error(err, "Webhook certificate watcher stopped")
			}
		}()
	}
	addr := net.JoinHostPort(s.host, strconv.Itoa(s.port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for the webhook on %s: %w", addr, err)
	}
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.mu.Unlock()
	timeout := time.Minute
	srv := &manager.Server{Name: "webhook", Listener: tls.NewListener(ln, cfg), ShutdownTimeout: &timeout,
		Server: &http.Server{Handler: s.WebhookMux(), ReadHeaderTimeout: 10 * time.Second}}
	return srv.Start(ctx)
}

// StartedChecker passes once the server listens and answers a TLS handshake
// on the address it bound.
func (s *webhookServer) StartedChecker() healthz.Checker {
	return func(*http.Request) error {
		addr := s.boundAddr()
		if addr == "" {
			return fmt.Errorf("webhook server has not been started yet")
		}
		d := &net.Dialer{Timeout: 10 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a reachability check, as controller-runtime's
		if err != nil {
			return fmt.Errorf("webhook server is not reachable: %w", err)
		}
		return conn.Close()
	}
}

// boundAddr is the address the server listens on; empty before Start.
func (s *webhookServer) boundAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}
