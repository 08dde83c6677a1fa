package server

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// FuzzRawRequest writes raw bytes to a sidecar (the production listener
// setup, over loopback) in front of a healthy upstream. Seeds: the framing
// corpus of TestRequestFraming. Invariants:
//   - no 5xx but net/http's own 501 and 505 (the upstream is healthy; a
//     body the client botched is its fault),
//   - every request the upstream gets carries the sidecar's identity
//     headers or is for a public path,
//   - after a first request with Transfer-Encoding, or in HTTP/1.0, nothing
//     follows its response: the connection is closed.
func FuzzRawRequest(f *testing.F) {
	fix := framingFixture()
	for _, tc := range framingCases(fix) {
		f.Add([]byte(tc.raw))
	}
	var (
		mu         sync.Mutex
		violations []string
	)
	up := newRecordingUpstream(f, func(g upstreamGot) {
		if g.keyID != "apk-lake" && g.path != "/healthz" {
			mu.Lock()
			violations = append(violations, g.method+" "+g.path+" reached the upstream unauthenticated")
			mu.Unlock()
		}
	})
	// Short limits: an incomplete input ends when the sidecar gives up. Every
	// millisecond counts: most inputs the mutator (and above all the
	// minimizer, which runs a new input over and over) makes are incomplete
	// and wait for these timeouts; with 300 ms / 1 s execs fell to a few a
	// second and minimization looked like a stall.
	front := newRawFront(f, fix, up.srv.URL, Timeouts{ReadHeader: 50 * time.Millisecond, Read: 200 * time.Millisecond, Write: 5 * time.Second, Idle: 50 * time.Millisecond})

	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := net.Dial("tcp", front.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() { _, _ = c.Write(raw) }()
		br := bufio.NewReader(c)
		method, mustEnd := firstHead(raw)
		resp, err := readFinalFor(br, method)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented && resp.StatusCode != http.StatusHTTPVersionNotSupported {
				t.Errorf("status %d", resp.StatusCode)
			}
			if mustEnd {
				if n, _ := br.Read(make([]byte, 1)); n > 0 {
					t.Errorf("bytes followed the response to an ambiguously framed request")
				}
			}
		}
		mu.Lock()
		v := violations
		violations = nil
		mu.Unlock()
		if len(v) > 0 {
			t.Errorf("%s", strings.Join(v, "; "))
		}
	})
}

// firstHead returns the method of the first request in raw and whether its
// framing obliges the sidecar to close after answering it (HTTP/1.0, or a
// Transfer-Encoding field).
func firstHead(raw []byte) (method string, mustClose bool) {
	lines := bytes.Split(raw, []byte("\n"))
	if len(lines) == 0 {
		return "", false
	}
	reqLine := string(bytes.TrimRight(lines[0], "\r"))
	method, _, _ = strings.Cut(reqLine, " ")
	mustClose = strings.HasSuffix(reqLine, " HTTP/1.0")
	for _, l := range lines[1:] {
		l = bytes.TrimRight(l, "\r")
		if len(l) == 0 {
			break
		}
		if name, _, ok := bytes.Cut(l, []byte(":")); ok && strings.EqualFold(string(name), "transfer-encoding") {
			mustClose = true
		}
	}
	return method, mustClose
}

// readFinalFor reads the next non-1xx response to a request with method.
func readFinalFor(br *bufio.Reader, method string) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 {
			return resp, nil
		}
	}
}
