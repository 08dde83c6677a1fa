package server

import (
	"net/http"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// TestMethodOverrideIsAuthorised: frameworks such as Rails (Rack::MethodOverride),
// Laravel and Symfony route a POST by X-HTTP-Method-Override or _method, so
// the rules must hold for the overriding method too.
func TestMethodOverrideIsAuthorised(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	lake := sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])    // charges:List only
	other := sidecartest.Basic("apk-other", f.Secrets["apk-other"]) // charges:All
	for _, tc := range []struct {
		name, method, path string
		hdr                []string
		want               int
	}{
		{"X-HTTP-Method-Override", "GET", "/charges", []string{"X-HTTP-Method-Override", "POST"}, http.StatusForbidden},
		{"lower-case override", "GET", "/charges", []string{"X-Http-Method-Override", "post"}, http.StatusForbidden},
		{"CGI spelling", "GET", "/charges", []string{"X_HTTP_METHOD_OVERRIDE", "POST"}, http.StatusForbidden},
		{"X-HTTP-Method", "GET", "/charges", []string{"X-HTTP-Method", "POST"}, http.StatusForbidden},
		{"X-Method-Override", "GET", "/charges", []string{"X-Method-Override", "POST"}, http.StatusForbidden},
		{"_method query", "GET", "/charges?_method=POST", nil, http.StatusForbidden},
		{"override to an allowed method", "GET", "/charges", []string{"X-HTTP-Method-Override", "GET"}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.Do(tc.method, tc.path, "", append([]string{"Authorization", lake}, tc.hdr...)...)
			if r.Status != tc.want {
				t.Fatalf("got %d %s, want %d", r.Status, r.Body, tc.want)
			}
		})
	}
	// A key holding both permissions still gets through.
	r := h.Do("GET", "/charges", "", "Authorization", other, "X-HTTP-Method-Override", "POST")
	if r.Status != http.StatusOK {
		t.Fatalf("key with charges:All: %d %s", r.Status, r.Body)
	}
}
