package server

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// TestCachedTokenStopsWhenItsKeyRetires: a verified token is cached until it
// expires, but a previous signing key's tokens stop at its retiresAt even
// when the bundle does not change (file mode, or before the operator prunes
// the key): a cache hit must not outlive what a fresh verification refuses.
func TestCachedTokenStopsWhenItsKeyRetires(t *testing.T) {
	f := sidecartest.ChargesFixture()
	f.Bundle.Policy.TokenTTLSeconds = 86400
	var clock atomic.Int64
	t0 := time.Now()
	clock.Store(t0.UnixNano())
	h := newHarness(t, f, func(o *Options) { o.Now = func() time.Time { return time.Unix(0, clock.Load()) } })
	tok := h.Token("apk-lake")
	f.RotateSigningKey(bundle.AlgEdDSA, t0.Add(time.Hour))
	h.reload()
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok); r.Status != http.StatusOK {
		t.Fatalf("before the key retires: %d %s", r.Status, r.Body)
	}
	clock.Store(t0.Add(time.Hour + time.Second).UnixNano())
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok), sidecartest.Challenge)
}
