package decision

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/server"
)

// apiKeyHeader lets the test present a key and one of its clients in headers
// (X-Keygate-Client-Key), the way can-i's --client names the acting client.
const apiKeyHeader = "X-Api-Key"

var sidecarPaths = []string{server.PathRevoke, server.PathIntrospect, server.PathJWKS, server.PathAuthTest}

func fixture(t *testing.T) (*bundletest.Fixture, *config.Runtime) {
	return fixtureWith(t, "")
}

func fixtureWith(t *testing.T, enforcement string) (*bundletest.Fixture, *config.Runtime) {
	t.Helper()
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Enforcement = enforcement
	p := &f.Bundle.Policy
	p.APIKeyHeader = apiKeyHeader
	p.TrustedProxies = []string{"127.0.0.1/32", "::1/128"}
	p.AllowedCIDRs = []string{"10.0.0.0/8", "127.0.0.0/8"}
	p.PublicPaths = []string{"/healthz", "/docs"}
	p.Rules = []bundle.Rule{
		{Methods: []string{"GET"}, Paths: []string{"/charges", "/charges/*"}, Permission: "charges:List"},
		{Methods: []string{"POST"}, Paths: []string{"/charges"}, Permission: "charges:Create"},
		{Paths: []string{"/reports/*"}, Permission: "reports:Read"},
		{Methods: []string{"*"}, Paths: []string{"/admin"}, Permission: "admin:All"},
	}
	f.AddKey("apk-full", []string{"charges:All", "reports:Read"}, bundletest.WithClient("acme", "charges:List"))
	f.AddKey("apk-list", []string{"charges:List"}, bundletest.WithCIDRs("10.1.0.0/16"))
	f.AddKey("apk-old", []string{"charges:List"}, bundletest.WithExpiry(time.Now().Add(-time.Hour)))
	rt, err := config.Compile(f.JSON())
	if err != nil {
		t.Fatalf("compile bundle: %v", err)
	}
	return f, rt
}

// TestAgreesWithSidecar sends every row to a real sidecar over loopback and
// asks Explain about the same request: they must agree on every row, and
// each row's expected outcome pins what both say.
func TestAgreesWithSidecar(t *testing.T) {
	for _, enforcement := range []string{"", bundle.EnforcementAudit} {
		t.Run("enforcement="+enforcement, func(t *testing.T) { agreesWithSidecar(t, enforcement) })
	}
}

func agreesWithSidecar(t *testing.T, enforcement string) {
	f, rt := fixtureWith(t, enforcement)
	store := &config.Store{}
	if _, err := store.Update(f.JSON()); err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Decision", r.Header.Get(server.HeaderDecision))
		w.WriteHeader(http.StatusOK)
	}))
	defer upstream.Close()
	u, _ := url.Parse(upstream.URL)
	srv := server.New(server.Options{Store: store, Upstream: u, FailureLimit: 100000,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	front := httptest.NewServer(srv.Handler())
	defer front.Close()

	rows := []struct {
		key, client, method, path, from string
		want                            int // sidecar status: 200 proxied, 401, 403
		reason                          string
	}{
		{"apk-full", "", "GET", "/charges", "10.2.3.4", 200, ReasonRule},
		{"apk-full", "", "GET", "/charges/ch_1", "10.2.3.4", 200, ReasonRule},
		{"apk-full", "", "HEAD", "/charges", "10.2.3.4", 200, ReasonRule},
		{"apk-full", "", "POST", "/charges", "10.2.3.4", 200, ReasonRule},
		{"apk-full", "", "DELETE", "/charges", "10.2.3.4", 403, ReasonNoRule},
		{"apk-full", "", "GET", "/reports/2026", "10.2.3.4", 200, ReasonRule},
		{"apk-full", "", "PUT", "/reports/2026", "10.2.3.4", 200, ReasonRule},
		{"apk-full", "", "GET", "/admin", "10.2.3.4", 403, ReasonMissingPermission},
		{"apk-full", "", "GET", "/healthz", "10.2.3.4", 200, ReasonPublic},
		{"apk-full", "", "GET", "/elsewhere", "10.2.3.4", 403, ReasonNoRule},
		{"apk-full", "", "GET", "/charges", "192.0.2.1", 401, authn.ReasonCIDR},
		{"apk-full", "acme", "GET", "/charges", "10.2.3.4", 200, ReasonRule},
		{"apk-full", "acme", "POST", "/charges", "10.2.3.4", 403, ReasonMissingPermission},
		{"apk-full", "acme", "GET", "/reports/x", "10.2.3.4", 403, ReasonMissingPermission},
		{"apk-full", "nobody", "GET", "/charges", "10.2.3.4", 401, authn.ReasonUnknownClient},
		{"apk-list", "", "GET", "/charges", "10.1.9.9", 200, ReasonRule},
		{"apk-list", "", "GET", "/charges", "10.2.3.4", 401, authn.ReasonCIDR},
		{"apk-list", "", "POST", "/charges", "10.1.9.9", 403, ReasonMissingPermission},
		{"apk-list", "", "GET", "/docs", "192.0.2.1", 200, ReasonPublic},
		{"apk-old", "", "GET", "/charges", "10.2.3.4", 401, authn.ReasonKeyExpired},
		{"apk-none", "", "GET", "/charges", "10.2.3.4", 401, authn.ReasonUnknownKey},
	}
	for _, row := range rows {
		t.Run(row.key+" "+row.client+" "+row.method+" "+row.path+" from "+row.from, func(t *testing.T) {
			req, err := http.NewRequest(row.method, front.URL+row.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			secret := f.Secrets[row.key]
			if secret == "" {
				secret = bundletest.Secret()
			}
			req.Header.Set(apiKeyHeader, row.key+":"+secret)
			if row.client != "" {
				req.Header.Set(authn.ClientKeyHeader, row.client)
			}
			req.Header.Set("X-Forwarded-For", row.from)
			resp, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()

			d := Explain(rt, Request{Method: row.method, Path: row.path, KeyID: row.key, Client: row.client,
				From: netip.MustParseAddr(row.from), SidecarPaths: sidecarPaths, Now: time.Now()})
			explained := http.StatusOK
			if d.Status != 0 {
				explained = d.Status
			}
			if explained != resp.StatusCode {
				t.Errorf("Explain says %d (%s), the sidecar answered %d", explained, d.Reason, resp.StatusCode)
			}
			want := row.want
			if enforcement == bundle.EnforcementAudit && d.Audit {
				// Audit forwards what Enforce refuses, and says so to the workload.
				want = http.StatusOK
				verdict := resp.Header.Get("X-Upstream-Decision")
				if d.Allowed != (verdict == "allow") || verdict == "" {
					t.Errorf("Explain allowed=%v, the sidecar told the workload %q", d.Allowed, verdict)
				}
			}
			if resp.StatusCode != want || d.Reason != row.reason || d.Allowed != (row.want == http.StatusOK) {
				t.Errorf("sidecar %d, reason %q, allowed %v; want %d, %q", resp.StatusCode, d.Reason, d.Allowed, want, row.reason)
			}
		})
	}
}

func TestExplainDetails(t *testing.T) {
	_, rt := fixture(t)
	now := time.Now()
	d := Explain(rt, Request{Method: "get", Path: "/charges/ch_1", KeyID: "apk-list", Now: now})
	if !d.Allowed || d.Rule != 0 || d.Permission != "charges:List" || !d.Held || d.CIDR.Checked {
		t.Errorf("GET /charges/ch_1 by apk-list: %+v", d)
	}
	if len(d.CIDR.Key) != 1 || d.CIDR.Key[0] != "10.1.0.0/16" {
		t.Errorf("key CIDRs = %v", d.CIDR.Key)
	}
	d = Explain(rt, Request{Method: "GET", Path: "/admin", KeyID: "apk-full", Now: now})
	if d.Allowed || d.Rule != 3 || d.Permission != "admin:All" || d.Held || d.Status != http.StatusForbidden {
		t.Errorf("GET /admin by apk-full: %+v", d)
	}
	d = Explain(rt, Request{Method: "POST", Path: "/api/token", KeyID: "apk-none", Now: now})
	if !d.Allowed || d.Reason != ReasonEndpoint {
		t.Errorf("token path: %+v", d)
	}
	d = Explain(rt, Request{Method: "GET", Path: server.PathJWKS, KeyID: "apk-none", SidecarPaths: sidecarPaths, Now: now})
	if !d.Allowed || d.Reason != ReasonEndpoint {
		t.Errorf("JWKS path: %+v", d)
	}
	// defaultAction Authenticated lets an unmatched request through.
	f, _ := fixture(t)
	f.Bundle.Policy.DefaultAction = "Authenticated"
	rt2, err := config.Compile(f.JSON())
	if err != nil {
		t.Fatal(err)
	}
	d = Explain(rt2, Request{Method: "GET", Path: "/elsewhere", KeyID: "apk-full", Now: now})
	if !d.Allowed || d.Reason != ReasonDefaultAction || d.Rule != -1 {
		t.Errorf("default Authenticated: %+v", d)
	}
}
