package server

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// framingCase is one raw request (with whatever is pipelined behind it) and
// what the sidecar must do with it.
type framingCase struct {
	name   string
	raw    string
	status int
	closed bool
	// more: final responses read after the first when the connection
	// stays open (pipelined answers plus the probe's).
	more int
	// upstream lists "path body" of every request the upstream read in
	// full, in order (the probe's /healthz excluded).
	upstream []string
	// reason, when set, must be counted once as result bad_request and
	// logged with that reason.
	reason string
}

func framingFixture() *bundletest.Fixture {
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Paths: []string{"/reports/*"}, Permission: "reports:Read"}}
	f.AddKey("apk-lake", []string{"reports:All"})
	return f
}

// framingCases are the RFC 9112 framing corpus, built for the fixture's
// credentials. They also seed FuzzRawRequest.
func framingCases(f *bundletest.Fixture) []framingCase {
	auth := "Authorization: " + sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])
	post := func(path string, extra ...string) string {
		return rawRequest("POST "+path+" HTTP/1.1", append([]string{"Host: app", auth}, extra...)...)
	}
	// An authenticated request a front proxy framing by Content-Length
	// would take for the next client's: it must never reach the upstream
	// behind an ambiguous one.
	smuggled := rawRequest("GET /reports/smuggled HTTP/1.1", "Host: app", auth)
	chunked := "5\r\nhello\r\n0\r\n\r\n"
	return []framingCase{
		// Ambiguous framing: answered, then the connection is closed.
		{name: "content-length and chunked", raw: post("/reports/a", "Content-Length: 4", "Transfer-Encoding: chunked") + chunked + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/a hello"}},
		{name: "chunked before content-length", raw: post("/reports/b", "Transfer-Encoding: chunked", "Content-Length: 60") + chunked + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/b hello"}},
		{name: "chunked alone", raw: post("/reports/c", "Transfer-Encoding: chunked") + chunked + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/c hello"}},
		{name: "chunked in other case", raw: post("/reports/c2", "transfer-encoding: ChUnKeD") + chunked + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/c2 hello"}},
		{name: "chunked with a small extension", raw: post("/reports/ext", "Transfer-Encoding: chunked") + "5;name=value\r\nhello\r\n0\r\n\r\n",
			status: 200, closed: true, upstream: []string{"/reports/ext hello"}},
		{name: "chunked with a trailer", raw: post("/reports/trailer", "Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
			status: 200, closed: true, upstream: []string{"/reports/trailer hello"}},
		{name: "HTTP/1.0 with chunked and keep-alive", raw: rawRequest("POST /reports/e HTTP/1.0", "Host: app", auth, "Connection: keep-alive", "Transfer-Encoding: chunked") + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/e "}},
		{name: "HTTP/1.0 with content-length and chunked", raw: rawRequest("POST /reports/e2 HTTP/1.0", "Host: app", auth, "Connection: keep-alive", "Content-Length: 5", "Transfer-Encoding: chunked") + "hello" + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/e2 hello"}},
		{name: "HTTP/1.0 keep-alive with content-length", raw: rawRequest("POST /reports/f HTTP/1.0", "Host: app", auth, "Connection: keep-alive", "Content-Length: 5") + "hello" + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/f hello"}},

		// Plain framing keeps the connection: pipelined requests are served.
		{name: "content-length alone, pipelined", raw: post("/reports/d", "Content-Length: 5") + "hello" + smuggled,
			status: 200, more: 2, upstream: []string{"/reports/d hello", "/reports/smuggled "}},
		{name: "no body, pipelined", raw: rawRequest("GET /reports/g HTTP/1.1", "Host: app", auth) + smuggled,
			status: 200, more: 2, upstream: []string{"/reports/g ", "/reports/smuggled "}},

		// Refused by net/http before any handler: 400/501 and closed.
		{name: "gzip then chunked", raw: post("/reports/h", "Transfer-Encoding: gzip, chunked") + chunked + smuggled, status: 501, closed: true},
		{name: "two transfer-encoding fields", raw: post("/reports/i", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + chunked + smuggled, status: 501, closed: true},
		{name: "transfer-encoding identity", raw: post("/reports/i2", "Transfer-Encoding: identity", "Content-Length: 5") + "hello" + smuggled, status: 501, closed: true},
		{name: "differing content-lengths", raw: post("/reports/j", "Content-Length: 5", "Content-Length: 6") + "hello!" + smuggled, status: 400, closed: true},
		{name: "comma-list content-length", raw: post("/reports/k", "Content-Length: 5, 5") + "hello" + smuggled, status: 400, closed: true},
		{name: "space before colon", raw: post("/reports/k2", "Transfer-Encoding : chunked", "Content-Length: 5") + "hello" + smuggled, status: 400, closed: true},
		// obs-fold is replaced by a space (RFC 9112 §5.2 allows it), as
		// net/http does; a bare LF ending a head line is accepted (§2.2).
		{name: "obs-fold", raw: post("/reports/k3", "X-A: a", " folded", "Content-Length: 5") + "hello" + smuggled, status: 200, more: 2,
			upstream: []string{"/reports/k3 hello X-A=a folded", "/reports/smuggled "}},
		{name: "bare CR in a header value", raw: post("/reports/k3b", "X-A: a\rb", "Content-Length: 5") + "hello" + smuggled, status: 400, closed: true},
		{name: "control byte in the target", raw: rawRequest("GET /reports/k3c\x01x HTTP/1.1", "Host: app", auth) + smuggled, status: 400, closed: true},
		{name: "space in the target", raw: rawRequest("GET /reports/k3d x HTTP/1.1", "Host: app", auth) + smuggled, status: 400, closed: true},
		{name: "oversize header block", raw: post("/reports/k3e", "X-Big: "+strings.Repeat("b", 40<<10), "Content-Length: 5") + "hello" + smuggled, status: 431, closed: true},
		{name: "bare LF in the head", raw: "POST /reports/k4 HTTP/1.1\nHost: app\n" + auth + "\nContent-Length: 5\n\nhello" + smuggled, status: 200, more: 2,
			upstream: []string{"/reports/k4 hello", "/reports/smuggled "}},
		{name: "NUL in a header", raw: post("/reports/k5", "X-A: a\x00b", "Content-Length: 5") + "hello" + smuggled, status: 400, closed: true},
		{name: "absolute-form target", raw: rawRequest("GET http://other.example/reports/k6 HTTP/1.1", "Host: app", auth) + smuggled, status: 200, more: 2,
			upstream: []string{"/reports/k6 ", "/reports/smuggled "}},

		// Pipelining on one connection: every request is authenticated on
		// its own, and one outside the fast path's subset (here chunked)
		// is served by net/http after fast-path ones, with its rules.
		{name: "pipelined second without credentials", raw: rawRequest("GET /reports/p1 HTTP/1.1", "Host: app", auth) + rawRequest("GET /reports/p2 HTTP/1.1", "Host: app"),
			status: 200, more: 2, upstream: []string{"/reports/p1 "}},
		{name: "pipelined second with a forged identity header", raw: rawRequest("GET /reports/p3 HTTP/1.1", "Host: app", auth) + rawRequest("GET /reports/p4 HTTP/1.1", "Host: app", "X-Keygate-Key-Id: apk-lake"),
			status: 200, more: 2, upstream: []string{"/reports/p3 "}},
		{name: "pipelined chunked with content-length after a plain request", raw: rawRequest("GET /reports/p5 HTTP/1.1", "Host: app", auth) + post("/reports/p6", "Content-Length: 4", "Transfer-Encoding: chunked") + chunked + smuggled,
			status: 200, more: 1, upstream: []string{"/reports/p5 ", "/reports/p6 hello"}},
		{name: "connection close then pipelined", raw: rawRequest("GET /reports/p7 HTTP/1.1", "Host: app", auth, "Connection: close") + smuggled,
			status: 200, closed: true, upstream: []string{"/reports/p7 "}},
		{name: "expect 100-continue", raw: post("/reports/p8", "Expect: 100-continue", "Content-Length: 5") + "hello" + smuggled,
			status: 200, more: 2, upstream: []string{"/reports/p8 hello", "/reports/smuggled "}},
		{name: "head over the fast path's buffer", raw: post("/reports/p9", "X-Big: "+strings.Repeat("b", 10<<10), "Content-Length: 5") + "hello" + smuggled,
			status: 200, more: 2, upstream: []string{"/reports/p9 hello", "/reports/smuggled "}},

		// More head forms RFC 9112 refuses.
		{name: "no host", raw: rawRequest("GET /reports/q1 HTTP/1.1", auth) + smuggled, status: 400, closed: true},
		{name: "two host fields", raw: rawRequest("GET /reports/q2 HTTP/1.1", "Host: app", "Host: other", auth) + smuggled, status: 400, closed: true},
		{name: "content-length with a sign", raw: post("/reports/q3", "Content-Length: +5") + "hello" + smuggled, status: 400, closed: true},
		{name: "negative content-length", raw: post("/reports/q4", "Content-Length: -1") + smuggled, status: 400, closed: true},
		{name: "identical content-lengths", raw: post("/reports/q5", "Content-Length: 5", "Content-Length: 5") + "hello" + smuggled,
			status: 200, more: 2, upstream: []string{"/reports/q5 hello", "/reports/smuggled "}},
		{name: "NUL in the target", raw: rawRequest("GET /reports/q6\x00x HTTP/1.1", "Host: app", auth) + smuggled, status: 400, closed: true},
		{name: "DEL in a header", raw: post("/reports/q7", "X-A: a\x7fb", "Content-Length: 5") + "hello" + smuggled, status: 400, closed: true},
		{name: "space before the first field", raw: "GET /reports/q8 HTTP/1.1\r\n Host: app\r\n" + auth + "\r\n\r\n" + smuggled, status: 400, closed: true},
		{name: "chunked with content-length on the token endpoint", raw: rawRequest("POST /api/token HTTP/1.1", "Host: app", "Content-Type: application/json", "Content-Length: 2", "Transfer-Encoding: chunked") + "2\r\n{}\r\n0\r\n\r\n" + smuggled,
			status: 400, closed: true},

		// Malformed chunked bodies: the client's fault, 400 or 413, closed,
		// never an upstream error, the upstream never reads a whole body.
		{name: "chunk size overflows 64 bits", raw: post("/reports/l", "Transfer-Encoding: chunked") + "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n" + smuggled,
			status: 400, closed: true, reason: "malformed_body"},
		{name: "chunk-size line ends in bare LF", raw: post("/reports/m", "Transfer-Encoding: chunked") + "5\nhello\r\n0\r\n\r\n" + smuggled,
			status: 400, closed: true, reason: "malformed_body"},
		{name: "bare CR in a chunk-size line", raw: post("/reports/m2", "Transfer-Encoding: chunked") + "5\rx\r\nhello\r\n0\r\n\r\n" + smuggled,
			status: 400, closed: true, reason: "malformed_body"},
		{name: "oversize chunk extension", raw: post("/reports/n", "Transfer-Encoding: chunked") + "5;" + strings.Repeat("a", 5000) + "\r\nhello\r\n0\r\n\r\n" + smuggled,
			status: 413, closed: true, reason: "body_too_large"},
		{name: "more chunk data than its size", raw: post("/reports/o", "Transfer-Encoding: chunked") + "5\r\nhelloEXTRA\r\n0\r\n\r\n" + smuggled,
			status: 400, closed: true, reason: "malformed_body"},
		{name: "chunk size not hex", raw: post("/reports/o2", "Transfer-Encoding: chunked") + "zz\r\nhello\r\n0\r\n\r\n" + smuggled,
			status: 400, closed: true, reason: "malformed_body"},
		{name: "token endpoint, malformed chunked body", raw: rawRequest("POST /api/token HTTP/1.1", "Host: app", "Content-Type: application/json", "Transfer-Encoding: chunked") + "1ffffffffffffffff\r\n{}\r\n0\r\n\r\n" + smuggled,
			status: 400, closed: true, reason: "malformed_body"},
	}
}

// TestRequestFraming runs the corpus against the plain listener with the
// fast path (production's default) and with net/http alone.
func TestRequestFraming(t *testing.T) {
	testRequestFraming(t, func(t *testing.T, fix *bundletest.Fixture, upstream string) *rawFront {
		return newRawFront(t, fix, upstream, testTimeouts)
	})
}

func TestRequestFramingNetHTTP(t *testing.T) {
	testRequestFraming(t, func(t *testing.T, fix *bundletest.Fixture, upstream string) *rawFront {
		return newRawFrontNetHTTP(t, fix, upstream, testTimeouts)
	})
}

// TestRequestFramingOverTLS runs the corpus against the TLS listener
// (HTTP/1.1 over TLS; HTTP/2 has no chunked framing).
func TestRequestFramingOverTLS(t *testing.T) {
	testRequestFraming(t, func(t *testing.T, fix *bundletest.Fixture, upstream string) *rawFront {
		return newRawFrontTLS(t, fix, upstream)
	})
}

func testRequestFraming(t *testing.T, newFront func(*testing.T, *bundletest.Fixture, string) *rawFront) {
	fix := framingFixture()
	for _, tc := range framingCases(fix) {
		t.Run(tc.name, func(t *testing.T) {
			up := newRecordingUpstream(t, nil)
			front := newFront(t, fix, up.srv.URL)
			res := front.exchange(tc.raw)
			if res.status != tc.status {
				t.Errorf("status %d, want %d (body %q)", res.status, tc.status, res.body)
			}
			if res.closed != tc.closed {
				t.Errorf("connection closed = %v, want %v (%d further responses)", res.closed, tc.closed, res.more)
			}
			if !tc.closed && res.more != tc.more {
				t.Errorf("%d further responses, want %d", res.more, tc.more)
			}
			var complete []string
			for _, g := range up.requests() {
				if g.path == "/healthz" {
					continue
				}
				if g.keyID != "apk-lake" {
					t.Errorf("upstream got %s %s without the sidecar's identity headers", g.method, g.path)
				}
				if g.bodyErr != nil {
					if tc.reason == "" {
						t.Errorf("upstream read a cut-short body on %s: %v", g.path, g.bodyErr)
					}
					continue
				}
				seen := g.path + " " + g.body
				if g.xa != "" {
					seen += " X-A=" + g.xa
				}
				complete = append(complete, seen)
			}
			if strings.Join(complete, "|") != strings.Join(tc.upstream, "|") {
				t.Errorf("upstream read %q, want %q", complete, tc.upstream)
			}
			if n := front.decisions("error", "upstream"); n != 0 {
				t.Errorf("counted %v upstream errors", n)
			}
			logs := front.logs.String()
			if strings.Contains(logs, "Upstream request failed") {
				t.Errorf("logged as an upstream failure:\n%s", logs)
			}
			if tc.reason != "" {
				if n := front.decisions("bad_request", tc.reason); n != 1 {
					t.Errorf("decisions{bad_request,%s} = %v, want 1", tc.reason, n)
				}
				if !loggedReason(logs, "bad_request", tc.reason) {
					t.Errorf("no access-log line with result bad_request, reason %s:\n%s", tc.reason, logs)
				}
				if res.header.Get("Content-Type") != "application/json" {
					t.Errorf("Content-Type %q", res.header.Get("Content-Type"))
				}
			}
		})
	}
}

// loggedReason reports an access-log line ("Handled request") with result
// and reason.
func loggedReason(logs, result, reason string) bool {
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if m["msg"] == "Handled request" && m["result"] == result && m["reason"] == reason {
			return true
		}
	}
	return false
}

// TestClientGoneMidBodyIsNotAnUpstreamError: a client that sends part of a
// Content-Length body and disconnects is a bad request, not an outage.
func TestClientGoneMidBodyIsNotAnUpstreamError(t *testing.T) {
	fix := framingFixture()
	up := newRecordingUpstream(t, nil)
	front := newRawFront(t, fix, up.srv.URL, testTimeouts)
	c, err := net.Dial("tcp", front.addr)
	if err != nil {
		t.Fatal(err)
	}
	raw := rawRequest("POST /reports/cut HTTP/1.1", "Host: app", "Authorization: "+sidecartest.Basic("apk-lake", fix.Secrets["apk-lake"]), "Content-Length: 100") + "hello"
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	// Close once the upstream has started reading the body.
	deadline := time.Now().Add(10 * time.Second)
	_ = c.Close()
	for {
		bad := front.decisions("bad_request", "malformed_body") + front.decisions("client_closed", "canceled")
		if bad == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cut-short request was never counted as the client's (logs: %s)", front.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := front.decisions("error", "upstream"); n != 0 {
		t.Fatalf("counted %v upstream errors", n)
	}
	for _, g := range up.requests() {
		if g.bodyErr == nil {
			t.Fatalf("upstream read a complete body %q from a cut-short request", g.body)
		}
	}
}

// TestUpstreamDownIsStill502 is the neighbour: a real upstream failure is
// 502, counted and logged as one.
func TestUpstreamDownIsStill502(t *testing.T) {
	fix := framingFixture()
	up := newRecordingUpstream(t, nil)
	url := up.srv.URL
	up.srv.Close()
	front := newRawFront(t, fix, url, testTimeouts)
	res := front.first(rawRequest("POST /reports/down HTTP/1.1", "Host: app", "Authorization: "+sidecartest.Basic("apk-lake", fix.Secrets["apk-lake"]), "Content-Length: 5") + "hello")
	if res.status != http.StatusBadGateway || !strings.Contains(res.body, "upstream unavailable") {
		t.Fatalf("got %d %s", res.status, res.body)
	}
	if n := front.decisions("error", "upstream"); n != 1 {
		t.Fatalf("decisions{error,upstream} = %v, want 1", n)
	}
	if !strings.Contains(front.logs.String(), "Upstream request failed") {
		t.Fatalf("no upstream failure logged: %s", front.logs.String())
	}
}
