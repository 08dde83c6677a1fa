package tokenendpoint_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/server"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// The endpoint is tested where it runs: mounted in the sidecar's chain, over
// loopback HTTP, in front of an upstream that echoes what reached it.

type harness struct {
	*sidecartest.Client
	t     *testing.T
	fix   *bundletest.Fixture
	store *config.Store
	// handler is the sidecar's chain the client reaches.
	handler http.Handler
}

func newHarness(t *testing.T, fix *bundletest.Fixture) *harness {
	t.Helper()
	h := &harness{t: t, fix: fix, store: &config.Store{}}
	h.reload()
	u, _ := url.Parse(sidecartest.EchoUpstream(t).URL)
	srv := server.New(server.Options{Store: h.store, Revoked: revocation.NewSet(), Upstream: u,
		Metrics: server.NewMetrics(h.store), FailureLimit: 1000, Log: slog.New(slog.DiscardHandler)})
	h.handler = srv.Handler()
	front := httptest.NewServer(h.handler)
	t.Cleanup(front.Close)
	h.Client = &sidecartest.Client{T: t, Fix: fix, Base: front.URL, HTTP: front.Client()}
	return h
}

// reload installs the fixture's current content.
func (h *harness) reload() {
	h.t.Helper()
	if _, err := h.store.Update(h.fix.JSON()); err != nil {
		h.t.Fatalf("load bundle: %v", err)
	}
}
