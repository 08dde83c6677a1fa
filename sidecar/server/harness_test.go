package server

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

type harness struct {
	// Client reaches the sidecar (the fast path in front of net/http, as in
	// production).
	*sidecartest.Client
	t        *testing.T
	fix      *bundletest.Fixture
	store    *config.Store
	revoked  *revocation.Set
	srv      *Server
	upstream *httptest.Server
}

type harnessOption func(*Options)

func newHarness(t *testing.T, fix *bundletest.Fixture, opts ...harnessOption) *harness {
	t.Helper()
	h := &harness{t: t, fix: fix, store: &config.Store{}, revoked: revocation.NewSet()}
	if fix != nil {
		if _, err := h.store.Update(fix.JSON()); err != nil {
			t.Fatalf("load bundle: %v", err)
		}
	}
	h.upstream = sidecartest.EchoUpstream(t)
	u, _ := url.Parse(h.upstream.URL)
	o := Options{Store: h.store, Revoked: h.revoked, Upstream: u, Metrics: NewMetrics(h.store), FailureLimit: 1000, Log: slog.New(slog.DiscardHandler)}
	for _, f := range opts {
		f(&o)
	}
	h.srv = New(o)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	h.Client = &sidecartest.Client{T: t, Fix: fix, Base: "http://" + serveFast(t, h.srv, testTimeouts), HTTP: &http.Client{Transport: tr}}
	return h
}

// serveFast serves srv as the sidecar's main listener does without TLS (the
// fast path in front of net/http) on a loopback port and returns its address.
func serveFast(t testing.TB, srv *Server, timeouts Timeouts) string {
	t.Helper()
	return serveFastHTTP(t, srv, NewHTTPServer(srv.Handler(), timeouts), timeouts)
}

func serveFastHTTP(t testing.TB, srv *Server, hs *http.Server, timeouts Timeouts) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := srv.NewFastServer(hs, timeouts)
	go func() { _ = fs.Serve(ln) }()
	t.Cleanup(func() { _ = fs.Close() })
	return ln.Addr().String()
}

// reload installs the fixture's current content.
func (h *harness) reload() {
	h.t.Helper()
	if _, err := h.store.Update(h.fix.JSON()); err != nil {
		h.t.Fatalf("reload bundle: %v", err)
	}
}
