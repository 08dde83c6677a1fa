package wire

import (
	"bufio"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// requestSeeds are heads the fast path must take, and heads it must leave
// to net/http (unusual: ParseRequest false).
var requestSeeds = []struct {
	head  string
	plain bool
}{
	{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
	{"GET /reports/x?y=1&z=%20 HTTP/1.1\r\nHost: a:80\r\nAuthorization: Basic eA==\r\nX-A: 1\r\nx-a: 2\r\n\r\n", true},
	{"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nconnection: Close\r\n\r\n", true},
	{"DELETE /a/(b)!*'~ HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nuser-agent: x \t\r\n\r\n", true},
	{"GET /? HTTP/1.1\r\nHost: a\r\n\r\n", true},
	{"GET /a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n", true},
	{"GET / HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xc3\xa9\r\n\r\n", true},
	{"GET / HTTP/1.0\r\nHost: a\r\n\r\n", false},
	{"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false},
	{"get / HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"GET / x HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"GET / HTTP/1.1\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", false},
	{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", false},
	{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", false},
	{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", false},
	{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", false},
	{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ntransfer-encoding: chunked\r\n\r\n", false},
	{"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: x\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nTrailer: X\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n folded\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX-A : a\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX A: a\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n", false},
}

func TestParseRequest(t *testing.T) {
	for _, tc := range requestSeeds {
		var r Request
		if got := ParseRequest(tc.head, &r); got != tc.plain {
			t.Errorf("ParseRequest(%q) = %v, want %v", tc.head, got, tc.plain)
		}
		if tc.plain {
			agreeWithNetHTTP(t, tc.head, &r)
		}
	}
}

func TestHeadEnd(t *testing.T) {
	for in, want := range map[string]int{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest": 27,
		"GET / HTTP/1.1\r\nHost: a\r\n\r":       0,
		"GET / HTTP/1.1\r\nHost: a\r\n":         0,
		"GET / HTTP/1.1\nHost: a\n\n":           -1,
		"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n":  -1,
		"":                                      0,
	} {
		if got := HeadEnd([]byte(in)); got != want {
			t.Errorf("HeadEnd(%q) = %d, want %d", in, got, want)
		}
	}
}

// headEndByBytes is HeadEnd written as the plain byte loop it replaced: the
// oracle of FuzzHeadEnd.
func headEndByBytes(b []byte) int {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\n':
			if i == 0 || b[i-1] != '\r' {
				return -1
			}
			if i >= 3 && b[i-2] == '\n' && b[i-3] == '\r' {
				return i + 1
			}
		case '\r':
			if i+1 < len(b) && b[i+1] != '\n' {
				return -1
			}
		}
	}
	return 0
}

// FuzzHeadEnd: HeadEnd agrees with the byte-by-byte definition.
func FuzzHeadEnd(f *testing.F) {
	for _, tc := range requestSeeds {
		f.Add([]byte(tc.head))
	}
	for _, s := range []string{"\r", "\n", "\r\n", "\r\n\r\n", "\n\r\n", "a\r\r\n", "a\r\n\r", "a\r\n\rb", "\r\n\r\nx\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := HeadEnd(b), headEndByBytes(b); got != want {
			t.Fatalf("HeadEnd(%q) = %d, the byte loop says %d", b, got, want)
		}
	})
}

// agreeWithNetHTTP checks that net/http reads the head as ParseRequest did:
// the fast path must see exactly the request the net/http path would.
func agreeWithNetHTTP(t *testing.T, head string, r *Request) {
	t.Helper()
	want, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
	if err != nil {
		t.Fatalf("fast path took %q, net/http refuses it: %v", head, err)
	}
	var u url.URL
	if !ParseTarget(r.Target, &u) {
		t.Fatalf("ParseTarget(%q) failed", r.Target)
	}
	if !reflect.DeepEqual(&u, want.URL) {
		t.Errorf("%q: URL %#v, net/http %#v", head, u, *want.URL)
	}
	if u.RequestURI() != r.Target {
		t.Errorf("%q: forwarded target %q differs from %q", head, u.RequestURI(), r.Target)
	}
	if r.Method != want.Method || r.Host != want.Host || r.ContentLength != want.ContentLength || r.Close != want.Close {
		t.Errorf("%q: %s %s %d %v, net/http %s %s %d %v", head, r.Method, r.Host, r.ContentLength, r.Close,
			want.Method, want.Host, want.ContentLength, want.Close)
	}
	if !reflect.DeepEqual(r.Header, want.Header) {
		t.Errorf("%q: header %v, net/http %v", head, r.Header, want.Header)
	}
}

// FuzzParseRequest: whatever ParseRequest takes, net/http takes too and
// reads the same way.
func FuzzParseRequest(f *testing.F) {
	for _, tc := range requestSeeds {
		f.Add([]byte(tc.head))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n := HeadEnd(b)
		if n <= 0 {
			return
		}
		var r Request
		if ParseRequest(string(b[:n]), &r) {
			agreeWithNetHTTP(t, string(b[:n]), &r)
		}
	})
}
