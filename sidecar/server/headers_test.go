package server

import (
	"strings"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// TestUnderscoreIdentityHeadersRemoved: CGI-style upstreams (WSGI, PHP, Rack)
// read X_Keygate_Key_Id and X-Keygate-Key-Id as the same HTTP_X_KEYGATE_KEY_ID,
// so inbound headers spelled with underscores must go too.
func TestUnderscoreIdentityHeadersRemoved(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	for _, auth := range []string{"", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])} {
		path := "/charges"
		if auth == "" {
			path = "/healthz"
		}
		hdr := []string{"X_Keygate_Key_Id", "apk-other", "x_keygate-permissions", "charges:All", "X-Keygate_Client", "acme"}
		if auth != "" {
			hdr = append(hdr, "Authorization", auth)
		}
		s := h.Do("GET", path, "", hdr...).Seen(t)
		for k, v := range s.Headers {
			n := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
			if strings.HasPrefix(n, "x-keygate-") && k != HeaderKeyID && k != HeaderPermissions {
				t.Fatalf("%s: upstream got %s: %v", path, k, v)
			}
		}
		if auth != "" && (strings.Join(s.Headers[HeaderKeyID], ",") != "apk-lake" || strings.Join(s.Headers[HeaderPermissions], ",") != "charges:List,reports:All") {
			t.Fatalf("identity headers: %v", s.Headers)
		}
	}
}

// TestEncodedSlashRefused: rules match the decoded path while the upstream
// gets the raw one, so a percent-encoded "/" is refused before any rule or
// public path is consulted.
func TestEncodedSlashRefused(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	auth := sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])
	for _, p := range []string{"/healthz%2F..%2Fcharges", "/charges%2fx", "/a%2Fb"} {
		if r := h.Do("GET", p, "", "Authorization", auth); r.Status != 400 {
			t.Errorf("GET %s: status %d, want 400", p, r.Status)
		}
	}
	if r := h.Do("GET", "/charges/a%20b", "", "Authorization", auth); r.Status != 200 {
		t.Errorf("GET with an encoded space: status %d, want 200", r.Status)
	}
}

// TestClientAddressHeadersReplaced: client-address headers a client sends
// never reach the upstream; X-Real-Ip carries the address the sidecar resolved.
func TestClientAddressHeadersReplaced(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	s := h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"]),
		"X-Real-IP", "10.9.9.9", "True-Client-IP", "10.9.9.9", "CF-Connecting-IP", "10.9.9.9", "X-Client-IP", "10.9.9.9").Seen(t)
	for _, k := range []string{"True-Client-Ip", "Cf-Connecting-Ip", "X-Client-Ip"} {
		if v, ok := s.Headers[k]; ok {
			t.Errorf("upstream got %s: %v", k, v)
		}
	}
	if got := strings.Join(s.Headers["X-Real-Ip"], ","); got != "127.0.0.1" {
		t.Errorf("X-Real-Ip = %q, want the socket peer 127.0.0.1", got)
	}
}
