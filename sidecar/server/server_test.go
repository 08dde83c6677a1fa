package server

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

func TestNoBundleIs503(t *testing.T) {
	h := newHarness(t, nil)
	for _, p := range []string{"/charges", "/api/token", "/healthz"} {
		r := h.Do("GET", p, "", "Authorization", sidecartest.Basic("apk-lake", "x"))
		if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
			t.Fatalf("%s before the first bundle: %d %s", p, r.Status, r.Body)
		}
	}
}

func TestBasicAuthentication(t *testing.T) {
	f := sidecartest.ChargesFixture()
	// A secret holding colons (RFC 7617: the password may).
	f.Bundle.Keys = append(f.Bundle.Keys, bundle.Key{Name: "colon", KeyID: "apk-colon", Permissions: []string{"charges:List"},
		Secrets: []bundle.SecretDigest{{Digest: bundle.Digest(f.Bundle.HashKey, "a:b:c"), Version: 1}}})
	h := newHarness(t, f)
	lake := f.Secrets["apk-lake"]
	raw := func(s string) string { return "Basic " + s }
	b64 := func(s string) string { return raw(basicB64(s)) }
	for _, tc := range []struct {
		name   string
		header []string
		ok     bool
	}{
		{"valid", []string{"Authorization", sidecartest.Basic("apk-lake", lake)}, true},
		{"scheme word in lower case", []string{"Authorization", "basic " + basicB64("apk-lake:"+lake)}, true},
		{"password with colons", []string{"Authorization", sidecartest.Basic("apk-colon", "a:b:c")}, true},
		{"unknown key", []string{"Authorization", sidecartest.Basic("apk-nobody", lake)}, false},
		{"wrong secret", []string{"Authorization", sidecartest.Basic("apk-lake", lake+"x")}, false},
		{"other key's secret", []string{"Authorization", sidecartest.Basic("apk-other", lake)}, false},
		{"expired key", []string{"Authorization", sidecartest.Basic("apk-old", f.Secrets["apk-old"])}, false},
		{"bad base64", []string{"Authorization", raw("!!!notbase64")}, false},
		{"no colon", []string{"Authorization", b64("apk-lake" + lake)}, false},
		{"empty user", []string{"Authorization", b64(":" + lake)}, false},
		{"empty password", []string{"Authorization", b64("apk-lake:")}, false},
		{"just a colon", []string{"Authorization", b64(":")}, false},
		{"no credentials", nil, false},
		{"unknown scheme", []string{"Authorization", "Digest " + lake}, false},
		{"scheme only", []string{"Authorization", "Basic"}, false},
		{"two Authorization headers", []string{"Authorization", sidecartest.Basic("apk-lake", lake), "Authorization", sidecartest.Basic("apk-lake", lake)}, false},
		{"kube-probe without credentials", []string{"User-Agent", "kube-probe/1.33"}, false},
		{"address outside the key's CIDRs", []string{"Authorization", sidecartest.Basic("apk-far", f.Secrets["apk-far"])}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.Do("GET", "/charges", "", tc.header...)
			if !tc.ok {
				sidecartest.Expect401(t, r, sidecartest.Challenge)
				return
			}
			if r.Status != http.StatusOK {
				t.Fatalf("got %d %s", r.Status, r.Body)
			}
			seen := r.Seen(t)
			if _, has := seen.Headers["Authorization"]; has {
				t.Fatal("Authorization reached the upstream")
			}
			if seen.Headers[HeaderKeyID] == nil {
				t.Fatal("no key ID header upstream")
			}
		})
	}
}

func basicB64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAuthorization(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	lake := sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])
	other := sidecartest.Basic("apk-other", f.Secrets["apk-other"])
	for _, tc := range []struct {
		name, method, path, auth string
		status                   int
		perm                     string
	}{
		{"exact path", "GET", "/charges", lake, 200, ""},
		{"prefix path", "GET", "/charges/ch_1/refunds", lake, 200, ""},
		{"resource:All covers an action", "GET", "/reports/2026", lake, 200, ""},
		{"missing permission", "POST", "/charges", lake, 403, "charges:Create"},
		{"charges:All covers charges:Create", "POST", "/charges", other, 200, ""},
		{"missing reports permission", "GET", "/reports/x", other, 403, "reports:Read"},
		{"no rule, default Deny", "GET", "/admin", lake, 403, ""},
		{"method not in the rule", "DELETE", "/charges", lake, 403, ""},
		{"public path without credentials", "GET", "/healthz", "", 200, ""},
		{"public path is exact", "GET", "/healthz/x", "", 401, ""},
		{"dot segments refused", "GET", "/healthz/../charges", "", 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			r := h.Do(tc.method, tc.path, "", hdr...)
			if r.Status != tc.status {
				t.Fatalf("got %d %s, want %d", r.Status, r.Body, tc.status)
			}
			if tc.status == 403 && tc.perm != "" {
				want := `{"error":"forbidden","message":"missing permission ` + tc.perm + `","permission":"` + tc.perm + `"}` + "\n"
				if string(r.Body) != want {
					t.Fatalf("403 body %q, want %q", r.Body, want)
				}
				if got := r.Header.Get("WWW-Authenticate"); got != `Bearer error="insufficient_scope", scope="`+tc.perm+`"` {
					t.Fatalf("WWW-Authenticate %q", got)
				}
			}
		})
	}
	t.Run("defaultAction Authenticated", func(t *testing.T) {
		f.Bundle.Policy.DefaultAction = "Authenticated"
		h.reload()
		if r := h.Do("GET", "/admin", "", "Authorization", lake); r.Status != 200 {
			t.Fatalf("got %d", r.Status)
		}
		sidecartest.Expect401(t, h.Do("GET", "/admin", ""), sidecartest.Challenge)
	})
}

func TestForwardedHeaders(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	tok := h.Token("apk-lake")
	ct := h.Do("POST", "/api/token", `{"clientKey":"acme"}`, "Content-Type", "application/json", "Authorization", "Bearer "+tok)
	if ct.Status != 201 {
		t.Fatalf("client token: %d %s", ct.Status, ct.Body)
	}
	clientTok := ct.JSON(t)["access_token"].(string)
	r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+clientTok,
		"X-Keygate-Key-Id", "apk-admin", "X-Keygate-Permissions", "admin:All", "x-keygate-client", "evil", "X-Keygate-Extra", "1")
	seen := r.Seen(t)
	want := map[string]string{HeaderKeyID: "apk-lake", HeaderClient: "acme", HeaderPermissions: "charges:List"}
	for k, v := range want {
		if got := seen.Headers[k]; len(got) != 1 || got[0] != v {
			t.Fatalf("upstream %s = %v, want [%s]", k, got, v)
		}
	}
	if seen.Headers["X-Keygate-Extra"] != nil || seen.Headers["Authorization"] != nil {
		t.Fatalf("spoofed headers reached the upstream: %v", seen.Headers)
	}
	if seen.Headers["X-Request-Id"] == nil {
		t.Fatal("no request ID")
	}
}

func TestClientAddress(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	far := sidecartest.Basic("apk-far", f.Secrets["apk-far"])
	// Spoofed X-Forwarded-For from an untrusted peer is ignored.
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", far, "X-Forwarded-For", "10.1.2.3"), sidecartest.Challenge)
	r := h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"]), "X-Forwarded-For", "10.1.2.3")
	if xff := r.Seen(t).Headers["X-Forwarded-For"]; len(xff) != 1 || xff[0] != "127.0.0.1" {
		t.Fatalf("untrusted X-Forwarded-For passed on: %v", xff)
	}
	// From a trusted proxy it is believed, walked right to left.
	f.Bundle.Policy.TrustedProxies = []string{"127.0.0.0/8", "192.168.0.0/16"}
	h.reload()
	for _, xff := range []string{"10.1.2.3", "8.8.8.8, 10.1.2.3", "10.1.2.3, 192.168.1.1"} {
		if r := h.Do("GET", "/charges", "", "Authorization", far, "X-Forwarded-For", xff); r.Status != 200 {
			t.Fatalf("XFF %q from a trusted proxy: %d", xff, r.Status)
		}
	}
	for _, xff := range []string{"10.1.2.3, 8.8.8.8", "garbage"} {
		if r := h.Do("GET", "/charges", "", "Authorization", far, "X-Forwarded-For", xff); r.Status == 200 {
			t.Fatalf("XFF %q allowed", xff)
		}
	}
	// Policy CIDRs apply to every key.
	f.Bundle.Policy.TrustedProxies = nil
	f.Bundle.Policy.AllowedCIDRs = []string{"10.0.0.0/8"}
	h.reload()
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])), sidecartest.Challenge)
}

func TestSecretRotationGrace(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	old := f.Secrets["apk-lake"]
	newer := f.RotateSecret("apk-lake", time.Now().Add(time.Hour))
	h.reload()
	for _, s := range []string{old, newer} {
		if r := h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", s)); r.Status != 200 {
			t.Fatalf("secret in grace refused: %d", r.Status)
		}
	}
	f.RotateSecret("apk-lake", time.Now().Add(-time.Second)) // newer is now past its grace
	h.reload()
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", newer)), sidecartest.Challenge)
}

func TestFailureLimit(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f, func(o *Options) { o.FailureLimit = 3 })
	for i := 0; i < 3; i++ {
		sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", "wrong")), sidecartest.Challenge)
	}
	r := h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"]))
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("after the limit: %d %v", r.Status, r.Header)
	}
	r = h.Do("POST", "/api/token", `{"apiKey":"apk-lake","secret":"x"}`, "Content-Type", "application/json")
	if r.Status != http.StatusTooManyRequests {
		t.Fatalf("token endpoint after the limit: %d", r.Status)
	}
}

type failingStore struct{}

func (failingStore) Revoke(context.Context, string, time.Time) error { return errors.New("API down") }

func TestRevocationNotPersistedIs503(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f, func(o *Options) { o.Revocations = failingStore{} })
	tok := h.Token("apk-lake")
	r := h.Do("POST", "/api/token", `{"action":"revoke"}`, "Content-Type", "application/json", "Authorization", "Bearer "+tok)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("got %d %s", r.Status, r.Body)
	}
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok); r.Status != 200 {
		t.Fatalf("token reported unrevoked is refused: %d", r.Status)
	}
}

func TestReadyz(t *testing.T) {
	store := &config.Store{}
	srv := New(Options{Store: store, Upstream: &url.URL{Scheme: "http", Host: "127.0.0.1:1"}})
	admin := AdminHandler(srv, store, NewMetrics(store))
	get := func(p string) int {
		rec := httptest.NewRecorder()
		req, _ := http.NewRequest("GET", p, nil)
		admin.ServeHTTP(rec, req)
		return rec.Code
	}
	if get("/readyz") != 503 || get("/healthz") != 200 {
		t.Fatal("ready before a bundle")
	}
	if _, err := store.Update(sidecartest.ChargesFixture().JSON()); err != nil {
		t.Fatal(err)
	}
	if get("/readyz") != 200 || get("/metrics") != 200 {
		t.Fatal("not ready with a bundle")
	}
	if _, err := store.Update([]byte(`{"version":"nope"}`)); err == nil {
		t.Fatal("bad bundle accepted")
	}
	if get("/readyz") != 200 {
		t.Fatal("a refused bundle replaced the good one")
	}
	srv.Drain()
	if get("/readyz") != 503 {
		t.Fatal("ready while draining")
	}
}

func TestCleanPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/charges": true, "/charges/": true, "/a/b.c/d": true, "/..a": true, "*": true,
		"": false, "charges": false, "/..": false, "/a/../b": false, "/a/./b": false, "/a/.": false,
		"//a": false, "/a//b": false, `/a\b`: false, "/a\x00": false,
	} {
		if cleanPath(p) != want {
			t.Errorf("cleanPath(%q) != %v", p, want)
		}
	}
}
