package server

import (
	"net/http"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// TestRuleMethodsHEADAndCase: upstreams answer HEAD with their GET handler
// (Go's ServeMux, Rails, Express) and some read methods case-insensitively,
// so "HEAD" and "get" must need what a rule asks of GET, not fall through to
// defaultAction.
func TestRuleMethodsHEADAndCase(t *testing.T) {
	f := sidecartest.ChargesFixture()
	f.AddKey("apk-reports", []string{"reports:All"})
	f.Bundle.Policy.DefaultAction = "Authenticated"
	h := newHarness(t, f)
	reports := sidecartest.Basic("apk-reports", f.Secrets["apk-reports"])
	lake := sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])
	for _, tc := range []struct {
		name, method, auth string
		want               int
	}{
		{"HEAD without the GET permission", "HEAD", reports, http.StatusForbidden},
		{"lower-case get without the permission", "get", reports, http.StatusForbidden},
		{"HEAD with the GET permission", "HEAD", lake, http.StatusOK},
		{"lower-case get with the permission", "get", lake, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := h.Do(tc.method, "/charges", "", "Authorization", tc.auth); r.Status != tc.want {
				t.Fatalf("got %d %s, want %d", r.Status, r.Body, tc.want)
			}
		})
	}
}
