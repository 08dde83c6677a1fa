package server

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

// upstreamSeen is what the echo upstream reports about a request it got.
type upstreamSeen struct {
	Path    string              `json:"path"`
	Method  string              `json:"method"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
}

func echoUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(upstreamSeen{Path: r.URL.Path, Method: r.Method, Headers: r.Header, Body: string(b)})
	}))
	t.Cleanup(up.Close)
	return up
}

type harness struct {
	t       *testing.T
	fix     *bundletest.Fixture
	store   *config.Store
	revoked *revocation.Set
	srv     *Server
	// base and client reach the sidecar (the fast path in front of
	// net/http, as in production).
	base     string
	client   *http.Client
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
	h.upstream = echoUpstream(t)
	u, _ := url.Parse(h.upstream.URL)
	o := Options{Store: h.store, Revoked: h.revoked, Upstream: u, Metrics: NewMetrics(h.store), FailureLimit: 1000, Log: slog.New(slog.DiscardHandler)}
	for _, f := range opts {
		f(&o)
	}
	h.srv = New(o)
	h.base = "http://" + serveFast(t, h.srv, testTimeouts)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	h.client = &http.Client{Transport: tr}
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

type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body %q is not JSON: %v", r.Body, err)
	}
	return m
}

func (r response) seen(t *testing.T) upstreamSeen {
	t.Helper()
	var s upstreamSeen
	if err := json.Unmarshal(r.Body, &s); err != nil || s.Path == "" {
		t.Fatalf("request did not reach the upstream: %d %s", r.Status, r.Body)
	}
	return s
}

// do sends a request; header values are added in order (repeat a name to
// send it twice).
func (h *harness) do(method, path string, body string, headers ...string) response {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.base+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// token gets a platform token with apiKey/secret.
func (h *harness) token(keyID string) string {
	h.t.Helper()
	r := h.do("POST", "/api/token", `{"apiKey":"`+keyID+`","secret":"`+h.fix.Secrets[keyID]+`"}`, "Content-Type", "application/json")
	if r.Status != http.StatusCreated {
		h.t.Fatalf("token for %s: %d %s", keyID, r.Status, r.Body)
	}
	return r.json(h.t)["access_token"].(string)
}

const generic401 = `{"error":"unauthorized","message":"authentication required"}` + "\n"

func expect401(t *testing.T, r response, challenge string) {
	t.Helper()
	if r.Status != http.StatusUnauthorized || string(r.Body) != generic401 {
		t.Fatalf("want the generic 401, got %d %q", r.Status, r.Body)
	}
	if got := r.Header.Get("WWW-Authenticate"); got != challenge {
		t.Fatalf("WWW-Authenticate = %q, want %q", got, challenge)
	}
}

var _ = time.Second
