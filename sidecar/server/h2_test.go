package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// h2Front serves the harness's chain over TLS with HTTP/2 (ALPN h2): the
// listener differs, the chain does not.
func h2Front(t *testing.T, h *harness) {
	t.Helper()
	front := httptest.NewUnstartedServer(h.srv.Handler())
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)
	h.Base, h.HTTP = front.URL, front.Client()
	resp, err := front.Client().Get(front.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("front speaks %s, want HTTP/2", resp.Proto)
	}
}

// h2cFront serves the harness's chain over HTTP/2 cleartext with prior
// knowledge (the listener --h2c configures), with a client that speaks it.
func h2cFront(t *testing.T, h *harness) {
	t.Helper()
	front := httptest.NewUnstartedServer(h.srv.Handler())
	front.Config.Protocols = &http.Protocols{}
	front.Config.Protocols.SetHTTP1(true)
	front.Config.Protocols.SetUnencryptedHTTP2(true)
	front.Start()
	t.Cleanup(front.Close)
	tr := front.Client().Transport.(*http.Transport)
	tr.Protocols = &http.Protocols{}
	tr.Protocols.SetUnencryptedHTTP2(true)
	h.Base, h.HTTP = front.URL, front.Client()
	resp, err := front.Client().Get(front.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("front speaks %s, want HTTP/2", resp.Proto)
	}
}

// TestAttacksOverH2: identity-header stripping (every spelling), path
// canonicalisation and the generic 401 hold over HTTP/2 (TLS and h2c with
// prior knowledge) as over HTTP/1.1.
func TestAttacksOverH2(t *testing.T) {
	for name, front := range map[string]func(*testing.T, *harness){"tls": h2Front, "h2c": h2cFront} {
		t.Run(name, func(t *testing.T) { attacksOverH2(t, front) })
	}
}

func attacksOverH2(t *testing.T, front func(*testing.T, *harness)) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	front(t, h)
	auth := sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])

	r := h.Do("GET", "/charges", "", "Authorization", auth,
		"X-Keygate-Key-Id", "apk-other", "X_Keygate_Key_Id", "apk-other", "x_keygate-permissions", "charges:All", "X-Keygate_Client", "acme")
	if r.Header.Get("Content-Type") == "" || r.Status != 200 {
		t.Fatalf("allowed request over h2: %d %s", r.Status, r.Body)
	}
	s := r.Seen(t)
	for k, v := range s.Headers {
		n := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
		if strings.HasPrefix(n, "x-keygate-") && k != HeaderKeyID && k != HeaderPermissions {
			t.Fatalf("upstream got %s: %v", k, v)
		}
	}
	if strings.Join(s.Headers[HeaderKeyID], ",") != "apk-lake" {
		t.Fatalf("identity headers over h2: %v", s.Headers)
	}

	for _, p := range []string{"/reports/../charges", "//charges", "/charges/%2F..", "/./charges"} {
		if r := h.Do("GET", p, "", "Authorization", auth); r.Status != 400 {
			t.Errorf("unclean path %q over h2: %d %s", p, r.Status, r.Body)
		}
	}
	sidecartest.Expect401(t, h.Do("GET", "/charges", ""), sidecartest.Challenge)
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", "wrong")), sidecartest.Challenge)
}
