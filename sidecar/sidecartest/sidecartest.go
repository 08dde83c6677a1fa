// Package sidecartest drives a sidecar's handler chain over loopback HTTP in
// tests: an upstream that echoes what reached it, requests whose headers are
// sent in the order given, a platform token from the token endpoint, and the
// documented generic 401.
package sidecartest

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

// Challenge is the WWW-Authenticate of a 401 when the policy accepts Basic
// and Bearer.
const Challenge = `Basic realm="keygate", Bearer realm="keygate"`

// Generic401 is the body of every authentication failure (DESIGN.md: it
// never says which check failed).
const Generic401 = `{"error":"unauthorized","message":"authentication required"}` + "\n"

// ChargesFixture is a policy over /charges and /reports with five keys: one
// with a client, one plain, one limited to loopback, one to 10.0.0.0/8, and
// one expired a minute ago.
func ChargesFixture() *bundletest.Fixture {
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

// Seen is what the echo upstream reports about a request it got.
type Seen struct {
	Path    string              `json:"path"`
	Method  string              `json:"method"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
}

// EchoUpstream serves on loopback and answers every request with its Seen as
// JSON; it is closed when the test ends.
func EchoUpstream(t testing.TB) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Seen{Path: r.URL.Path, Method: r.Method, Headers: r.Header, Body: string(b)})
	}))
	t.Cleanup(up.Close)
	return up
}

// Response is a whole response, its body read.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body as a JSON object or fails the test.
func (r Response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body %q is not JSON: %v", r.Body, err)
	}
	return m
}

// Seen is the echo upstream's report, or fails the test when the request did
// not reach it.
func (r Response) Seen(t testing.TB) Seen {
	t.Helper()
	var s Seen
	if err := json.Unmarshal(r.Body, &s); err != nil || s.Path == "" {
		t.Fatalf("request did not reach the upstream: %d %s", r.Status, r.Body)
	}
	return s
}

// Client sends requests to a sidecar at Base.
type Client struct {
	T    testing.TB
	Base string
	HTTP *http.Client
	// Fix holds the secrets Token presents.
	Fix *bundletest.Fixture
}

// Do sends a request; header values are added in order (repeat a name to
// send it twice).
func (c *Client) Do(method, path string, body string, headers ...string) Response {
	c.T.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.Base+path, rd)
	if err != nil {
		c.T.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		c.T.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// Token gets a platform token for keyID with its fixture secret.
func (c *Client) Token(keyID string) string {
	c.T.Helper()
	r := c.Do("POST", "/api/token", `{"apiKey":"`+keyID+`","secret":"`+c.Fix.Secrets[keyID]+`"}`, "Content-Type", "application/json")
	if r.Status != http.StatusCreated {
		c.T.Fatalf("token for %s: %d %s", keyID, r.Status, r.Body)
	}
	return r.JSON(c.T)["access_token"].(string)
}

// Basic is an Authorization value for HTTP Basic.
func Basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// Expect401 fails the test unless r is the generic 401 with challenge.
func Expect401(t testing.TB, r Response, challenge string) {
	t.Helper()
	if r.Status != http.StatusUnauthorized || string(r.Body) != Generic401 {
		t.Fatalf("want the generic 401, got %d %q", r.Status, r.Body)
	}
	if got := r.Header.Get("WWW-Authenticate"); got != challenge {
		t.Fatalf("WWW-Authenticate = %q, want %q", got, challenge)
	}
}
