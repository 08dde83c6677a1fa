package server

import (
	"net/http"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/sidecartest"
	"github.com/keygate-dev/keygate/sidecar/usage"
)

func TestAuthenticatedKeysAreRecorded(t *testing.T) {
	f := sidecartest.ChargesFixture()
	rec := usage.NewRecorder()
	clock := newClock()
	h := newHarness(t, f, func(o *Options) { o.Usage, o.Now = rec, clock.Now })
	if r := h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])); r.Status != http.StatusOK {
		t.Fatalf("request: %d %s", r.Status, r.Body)
	}
	h.Token("apk-other")                                                                                   // the token endpoint counts too
	h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-local", "wrong"))                  // failed: not a use
	h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-far", f.Secrets["apk-far"]))       // outside its CIDRs: not a use
	h.Do("GET", "/reports/x", "", "Authorization", sidecartest.Basic("apk-other", f.Secrets["apk-other"])) // forbidden, but authenticated
	got := rec.Changes()
	want := usage.FormatMinute(clock.Now().Unix() / 60)
	if len(got) != 2 || got["apk-lake"] != want || got["apk-other"] != want {
		t.Fatalf("recorded %v, want apk-lake and apk-other at %s", got, want)
	}
}
