package tokenendpoint_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

const tlsRequiredBody = `{"error":"invalid_request","error_description":"the token endpoint requires HTTPS"}` + "\n"

// TestRequireTLS: with tokenEndpoint.requireTLS the token paths refuse plain
// HTTP with a documented 400, believe X-Forwarded-Proto only from trusted
// proxies, and issue over TLS; without it plain HTTP issues as before.
func TestRequireTLS(t *testing.T) {
	body := func(h *harness) string {
		return `{"apiKey":"apk-lake","secret":"` + h.fix.Secrets["apk-lake"] + `"}`
	}
	issue := func(h *harness, headers ...string) sidecartest.Response {
		t.Helper()
		return h.Do("POST", "/api/token", body(h), append([]string{"Content-Type", "application/json"}, headers...)...)
	}
	refused := func(r sidecartest.Response, what string) {
		t.Helper()
		if r.Status != http.StatusBadRequest || string(r.Body) != tlsRequiredBody || r.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("%s: %d %q, want the 400 %q", what, r.Status, r.Body, tlsRequiredBody)
		}
	}
	issued := func(r sidecartest.Response, what string) {
		t.Helper()
		if r.Status != http.StatusCreated || r.JSON(t)["access_token"] == nil {
			t.Fatalf("%s: %d %s, want a token", what, r.Status, r.Body)
		}
	}

	t.Run("default off", func(t *testing.T) {
		h := newHarness(t, sidecartest.ChargesFixture())
		issued(issue(h), "plain HTTP without requireTLS")
	})

	t.Run("no trusted proxy", func(t *testing.T) {
		f := sidecartest.ChargesFixture()
		f.Bundle.Policy.RequireTLS = true
		h := newHarness(t, f)
		refused(issue(h), "plain HTTP")
		refused(issue(h, "X-Forwarded-Proto", "https"), "X-Forwarded-Proto from a peer that is not a trusted proxy")
		refused(h.Do("POST", "/oauth/token", "grant_type=client_credentials", "Content-Type", "application/x-www-form-urlencoded",
			"Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])), "client_credentials over plain HTTP")
		// The rest of the chain is not affected.
		if r := h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])); r.Status != http.StatusOK {
			t.Fatalf("resource over plain HTTP: %d %s", r.Status, r.Body)
		}

		tlsFront := httptest.NewTLSServer(h.handler)
		t.Cleanup(tlsFront.Close)
		h.Base, h.HTTP = tlsFront.URL, tlsFront.Client()
		issued(issue(h), "over TLS")
	})

	t.Run("trusted proxy", func(t *testing.T) {
		f := sidecartest.ChargesFixture()
		f.Bundle.Policy.RequireTLS = true
		f.Bundle.Policy.TrustedProxies = []string{"127.0.0.0/8"}
		h := newHarness(t, f)
		issued(issue(h, "X-Forwarded-Proto", "https"), "X-Forwarded-Proto: https from a trusted proxy")
		issued(issue(h, "X-Forwarded-Proto", "HTTPS, https"), "every hop https")
		refused(issue(h), "a trusted proxy without X-Forwarded-Proto")
		refused(issue(h, "X-Forwarded-Proto", "http"), "X-Forwarded-Proto: http")
		refused(issue(h, "X-Forwarded-Proto", "https, http"), "a proxy that appended http to the client's https")
		refused(issue(h, "X-Forwarded-Proto", "https", "X-Forwarded-Proto", "http"), "two headers, one http")
	})
}
