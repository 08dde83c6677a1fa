package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/config"
)

// TestPprofOnlyWhenEnabled: /debug/pprof/ is served on the admin port with
// WithPprof (--enable-pprof) and is 404 without it.
func TestPprofOnlyWhenEnabled(t *testing.T) {
	store := &config.Store{}
	srv := New(Options{Store: store, Upstream: &url.URL{Scheme: "http", Host: "127.0.0.1:1"}})
	get := func(h http.Handler, path string) (int, string) {
		ts := httptest.NewServer(h)
		defer ts.Close()
		resp, err := ts.Client().Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	off := AdminHandler(srv, store, NewMetrics(store))
	on := AdminHandler(srv, store, NewMetrics(store), WithPprof())
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
		if code, _ := get(off, p); code != http.StatusNotFound {
			t.Errorf("%s without pprof: %d", p, code)
		}
	}
	if code, body := get(on, "/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("goroutine profile: %d %.80q", code, body)
	}
	if code, body := get(on, "/debug/pprof/"); code != 200 || !strings.Contains(body, "heap") {
		t.Errorf("pprof index: %d %.80q", code, body)
	}
	if code, _ := get(on, "/healthz"); code != 200 {
		t.Errorf("healthz with pprof: %d", code)
	}
}
