package tokenendpoint_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/server"
)

// The endpoint is tested where it runs: mounted in the sidecar's chain, over
// loopback HTTP, in front of an upstream that echoes what reached it.

const challenge = `Basic realm="keygate", Bearer realm="keygate"`

func chargesFixture() *bundletest.Fixture {
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{
		{Methods: []string{"GET"}, Paths: []string{"/charges", "/charges/*"}, Permission: "charges:List"},
		{Methods: []string{"POST"}, Paths: []string{"/charges"}, Permission: "charges:Create"},
		{Paths: []string{"/reports/*"}, Permission: "reports:Read"},
	}
	f.AddKey("apk-lake", []string{"charges:List", "reports:All"}, bundletest.WithClient("acme", "charges:List", "charges:Create"))
	f.AddKey("apk-other", []string{"charges:All"})
	f.AddKey("apk-local", []string{"charges:List"}, bundletest.WithCIDRs("127.0.0.0/8"))
	f.AddKey("apk-far", []string{"charges:All"}, bundletest.WithCIDRs("10.0.0.0/8"))
	f.AddKey("apk-old", []string{"charges:All"}, bundletest.WithExpiry(time.Now().Add(-time.Minute)))
	return f
}

type harness struct {
	t     *testing.T
	fix   *bundletest.Fixture
	store *config.Store
	front *httptest.Server
	// handler is the sidecar's chain the front serves.
	handler http.Handler
}

func newHarness(t *testing.T, fix *bundletest.Fixture) *harness {
	t.Helper()
	h := &harness{t: t, fix: fix, store: &config.Store{}}
	h.reload()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(upstreamSeen{Path: r.URL.Path, Headers: r.Header})
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	srv := server.New(server.Options{Store: h.store, Revoked: revocation.NewSet(), Upstream: u,
		Metrics: server.NewMetrics(h.store), FailureLimit: 1000, Log: slog.New(slog.DiscardHandler)})
	h.handler = srv.Handler()
	h.front = httptest.NewServer(h.handler)
	t.Cleanup(h.front.Close)
	return h
}

// reload installs the fixture's current content.
func (h *harness) reload() {
	h.t.Helper()
	if _, err := h.store.Update(h.fix.JSON()); err != nil {
		h.t.Fatalf("load bundle: %v", err)
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

// upstreamSeen is what the upstream reports about the request it got.
type upstreamSeen struct {
	Path    string              `json:"path"`
	Headers map[string][]string `json:"headers"`
}

func (r response) seen(t *testing.T) upstreamSeen {
	t.Helper()
	var s upstreamSeen
	if err := json.Unmarshal(r.Body, &s); err != nil || s.Path == "" {
		t.Fatalf("request did not reach the upstream: %d %s", r.Status, r.Body)
	}
	return s
}

// do sends a request; header values are added in order.
func (h *harness) do(method, path string, body string, headers ...string) response {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.front.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := h.front.Client().Do(req)
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
