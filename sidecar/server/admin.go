package server

import (
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keygate-dev/keygate/sidecar/config"
)

// AdminOption adds to the admin port.
type AdminOption func(*http.ServeMux)

// WithPprof serves net/http/pprof under /debug/pprof/ (--enable-pprof).
func WithPprof() AdminOption {
	return func(mux *http.ServeMux) {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
}

// AdminHandler serves /healthz (liveness), /readyz (a bundle is loaded and
// the server is not draining; the detail names a stale source), /metrics,
// and what opts add.
func AdminHandler(s *Server, store *config.Store, m *Metrics, opts ...AdminOption) http.Handler {
	mux := http.NewServeMux()
	for _, o := range opts {
		o(mux)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		st := store.Status()
		code := http.StatusOK
		var detail string
		switch {
		case s.Draining():
			code, detail = http.StatusServiceUnavailable, "draining\n"
		case !st.Loaded:
			code, detail = http.StatusServiceUnavailable, "no bundle loaded\n"
			if st.LastError != nil {
				detail += "last bundle refused: " + st.LastError.Error() + "\n"
			}
			if st.Stale != nil {
				detail += "source unreachable: " + st.Stale.Error() + "\n"
			}
		default:
			detail = fmt.Sprintf("ok: bundle %s loaded %s ago\n", st.Fingerprint, st.Age.Round(time.Second))
			if st.Stale != nil {
				detail += fmt.Sprintf("source unreachable since %s (serving the last good bundle): %v\n", st.StaleSince.UTC().Format(time.RFC3339), st.Stale)
			}
			if st.LastError != nil {
				detail += "last bundle refused (previous stays in force): " + st.LastError.Error() + "\n"
			}
			if s.opts.TLSStatus != nil {
				if err := s.opts.TLSStatus(); err != nil {
					detail += "TLS key pair on disk refused (previous stays in force): " + err.Error() + "\n"
				}
			}
			if s.opts.ClientCAStatus != nil {
				if err := s.opts.ClientCAStatus(); err != nil {
					detail += "TLS client CA file on disk refused (previous stays in force): " + err.Error() + "\n"
				}
			}
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte(detail))
	})
	if m != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	}
	return withFraming(mux)
}

// Timeouts of the main listener.
type Timeouts struct {
	ReadHeader time.Duration
	Read       time.Duration
	Write      time.Duration
	Idle       time.Duration
}

// DefaultTimeouts protect against slow clients without cutting long uploads
// or downloads short; WebSockets clear their deadlines.
var DefaultTimeouts = Timeouts{ReadHeader: 10 * time.Second, Read: 5 * time.Minute, Write: 5 * time.Minute, Idle: 2 * time.Minute}

// NewHTTPServer wraps h with the listener limits.
func NewHTTPServer(h http.Handler, t Timeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    32 << 10,
	}
}
