package server

import (
	"strings"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// TestH2CUpgradeNotForwarded: an "Upgrade: h2c" accepted by the upstream
// would turn the connection into an HTTP/2 tunnel whose later requests never
// pass the sidecar (h2c smuggling). Only WebSocket upgrades are forwarded;
// any other Upgrade is dropped and the request proxied as plain HTTP/1.1.
func TestH2CUpgradeNotForwarded(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	for _, tc := range []struct{ name, path, auth string }{
		{"public path", "/healthz", ""},
		{"authenticated", "/charges", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := []string{"Connection", "Upgrade, HTTP2-Settings", "Upgrade", "h2c", "HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"}
			if tc.auth != "" {
				hdr = append(hdr, "Authorization", tc.auth)
			}
			s := h.Do("GET", tc.path, "", hdr...).Seen(t)
			for k := range s.Headers {
				if strings.EqualFold(k, "Upgrade") || strings.EqualFold(k, "Connection") {
					t.Fatalf("upstream got %s: %v", k, s.Headers[k])
				}
			}
		})
	}
}
