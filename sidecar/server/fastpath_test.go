package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// fastFront is a sidecar served by the fast path in front of upstream h.
func fastFront(t *testing.T, h http.Handler, configure ...func(*httptest.Server)) (addr, auth string, up *httptest.Server) {
	t.Helper()
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Paths: []string{"/r/*"}, Permission: "r:Read"}}
	f.AddKey("apk-fast", []string{"r:All"})
	store := &config.Store{}
	if _, err := store.Update(f.JSON()); err != nil {
		t.Fatal(err)
	}
	up = httptest.NewUnstartedServer(h)
	for _, c := range configure {
		c(up)
	}
	up.Start()
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	srv := New(Options{Store: store, Upstream: u, Metrics: NewMetrics(store), Log: slog.New(slog.DiscardHandler), FailureLimit: 1000})
	return serveFast(t, srv, testTimeouts), "Authorization: " + sidecartest.Basic("apk-fast", f.Secrets["apk-fast"]), up
}

func dialRaw(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	return resp, string(b)
}

// TestFastPathResponses: the response framings an upstream uses reach the
// client intact over one kept-alive connection: Content-Length, chunked with
// trailers, HEAD, 204, 304, a large body, and a close-delimited one last.
func TestFastPathResponses(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	addr, auth, _ := fastFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/r/chunked":
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "part1-")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "part2")
			w.Header().Set("X-Sum", "42")
		case "/r/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/r/notmodified":
			w.WriteHeader(http.StatusNotModified)
		case "/r/big":
			_, _ = io.WriteString(w, big)
		case "/r/upload":
			b, _ := io.ReadAll(r.Body)
			_, _ = w.Write([]byte{byte(len(b) >> 20)})
			_, _ = io.WriteString(w, "|"+r.Header.Get("Content-Length"))
		case "/r/close":
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "bye")
		default:
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "hello")
		}
	}))
	c, br := dialRaw(t, addr)
	send := func(method, path string, extra ...string) {
		raw := rawRequest(method+" "+path+" HTTP/1.1", append([]string{"Host: app", auth}, extra...)...)
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
	}
	send("GET", "/r/plain")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "hello" || resp.Header.Get("Date") == "" {
		t.Fatalf("plain: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	send("GET", "/r/chunked")
	resp, body := readResp(t, br, "GET")
	if body != "part1-part2" || resp.Trailer.Get("X-Sum") != "42" || len(resp.TransferEncoding) != 1 {
		t.Fatalf("chunked: %q trailer %v te %v", body, resp.Trailer, resp.TransferEncoding)
	}
	send("HEAD", "/r/plain")
	if resp, body := readResp(t, br, "HEAD"); resp.StatusCode != 200 || body != "" || resp.ContentLength != 5 {
		t.Fatalf("HEAD: %d %q %d", resp.StatusCode, body, resp.ContentLength)
	}
	send("GET", "/r/nocontent")
	if resp, _ := readResp(t, br, "GET"); resp.StatusCode != 204 {
		t.Fatalf("204: %d", resp.StatusCode)
	}
	send("GET", "/r/notmodified")
	if resp, _ := readResp(t, br, "GET"); resp.StatusCode != 304 {
		t.Fatalf("304: %d", resp.StatusCode)
	}
	send("GET", "/r/big")
	if _, body := readResp(t, br, "GET"); body != big {
		t.Fatalf("big body: %d bytes", len(body))
	}
	send("POST", "/r/upload", "Content-Length: "+strconv.Itoa(len(big)))
	if _, err := io.WriteString(c, big); err != nil {
		t.Fatal(err)
	}
	if _, body := readResp(t, br, "POST"); body != "\x01|1048576" {
		t.Fatalf("upload: %q", body)
	}
	send("GET", "/r/close")
	if resp, body := readResp(t, br, "GET"); body != "bye" || resp.StatusCode != 200 {
		t.Fatalf("close: %d %q", resp.StatusCode, body)
	}
	// The upstream's Connection: close is hop-by-hop: the client's
	// connection stays.
	send("GET", "/r/plain", "Connection: close")
	if resp, body := readResp(t, br, "GET"); body != "hello" || !resp.Close {
		t.Fatalf("client close: %q close=%v", body, resp.Close)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("connection still open after Connection: close (%d, %v)", n, err)
	}
}

// TestFastPathStreams: a response the upstream streams reaches the client
// before the upstream has finished it (server-sent events, long polls).
func TestFastPathStreams(t *testing.T) {
	release := make(chan struct{})
	addr, auth, _ := fastFront(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "data: second\n\n")
	}))
	defer close(release)
	c, br := dialRaw(t, addr)
	if _, err := io.WriteString(c, rawRequest("GET /r/events HTTP/1.1", "Host: app", auth)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event %q: %v", line, err)
	}
}

// countConns counts the upstream's connections entering state.
func countConns(state http.ConnState, n *atomic.Int32) func(*httptest.Server) {
	return func(s *httptest.Server) {
		s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == state {
				n.Add(1)
			}
		}
	}
}

// TestFastPathStaleUpstreamConnection: a kept-alive upstream connection the
// upstream closed while idle is replaced, not answered 502.
func TestFastPathStaleUpstreamConnection(t *testing.T) {
	var closed atomic.Int32
	addr, auth, up := fastFront(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), countConns(http.StateClosed, &closed))
	c, br := dialRaw(t, addr)
	get := func() *http.Response {
		if _, err := io.WriteString(c, rawRequest("GET /r/x HTTP/1.1", "Host: app", auth)); err != nil {
			t.Fatal(err)
		}
		resp, _ := readResp(t, br, "GET")
		return resp
	}
	if resp := get(); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	// The upstream closes its idle connections (as one with a short idle
	// timeout or a restart would).
	up.CloseClientConnections()
	deadline := time.Now().Add(10 * time.Second)
	for closed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the upstream never closed its connection")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if resp := get(); resp.StatusCode != 200 {
		t.Fatalf("after the upstream closed: %d", resp.StatusCode)
	}
}

// TestFastPathRefusalKeepsConnection: a refused request with a body is
// answered and its body read away; the next request on the connection is
// authenticated on its own.
func TestFastPathRefusalKeepsConnection(t *testing.T) {
	var got atomic.Int32
	addr, auth, _ := fastFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		_, _ = io.WriteString(w, "upstream "+r.URL.Path)
	}))
	c, br := dialRaw(t, addr)
	raw := rawRequest("POST /r/a HTTP/1.1", "Host: app", "Content-Length: 22") + "GET /r/smuggled HTTP/1.1" +
		rawRequest("POST /r/b HTTP/1.1", "Host: app", "Content-Length: 22", "Authorization: Basic eDp5") + "GET /r/smuggled HTTP/1.1" +
		rawRequest("GET /r/c HTTP/1.1", "Host: app", auth)
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{401, 401, 200} {
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != want {
			t.Fatalf("response %d: %d %q, want %d", i, resp.StatusCode, body, want)
		}
	}
	if n := got.Load(); n != 1 {
		t.Fatalf("upstream got %d requests, want 1", n)
	}
}

// TestFastPathHandsOff: requests outside the fast path's subset are served
// by net/http on the same connection, after fast-path requests.
func TestFastPathHandsOff(t *testing.T) {
	addr, auth, _ := fastFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Proto+" "+r.URL.Path+" "+string(b))
	}))
	c, br := dialRaw(t, addr)
	// Plain, then Expect: 100-continue (net/http answers 100 first).
	raw := rawRequest("GET /r/one HTTP/1.1", "Host: app", auth) +
		rawRequest("POST /r/two HTTP/1.1", "Host: app", auth, "Expect: 100-continue", "Content-Length: 3")
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	if _, body := readResp(t, br, "GET"); body != "HTTP/1.1 /r/one " {
		t.Fatalf("first: %q", body)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("want 100 Continue, got %v %v", resp, err)
	}
	if _, err := io.WriteString(c, "abc"); err != nil {
		t.Fatal(err)
	}
	if _, body := readResp(t, br, "POST"); body != "HTTP/1.1 /r/two abc" {
		t.Fatalf("second: %q", body)
	}
	// HTTP/1.0 on a new connection.
	c2, br2 := dialRaw(t, addr)
	if _, err := io.WriteString(c2, rawRequest("GET /r/three HTTP/1.0", "Host: app", auth)); err != nil {
		t.Fatal(err)
	}
	if resp, body := readResp(t, br2, "GET"); resp.StatusCode != 200 || !bytes.Contains([]byte(body), []byte("/r/three")) {
		t.Fatalf("HTTP/1.0: %d %q", resp.StatusCode, body)
	}
}

// TestFastPathShutdown: on Shutdown idle fast-path connections are closed,
// a request in flight finishes with its response, and Shutdown returns once
// it has.
func TestFastPathShutdown(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan struct{})
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Paths: []string{"/r/*"}, Permission: "r:Read"}}
	f.AddKey("apk-fast", []string{"r:All"})
	store := &config.Store{}
	if _, err := store.Update(f.JSON()); err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/r/slow" {
			close(arrived)
			<-release
		}
		_, _ = io.WriteString(w, "done "+r.URL.Path)
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	srv := New(Options{Store: store, Upstream: u, Log: slog.New(slog.DiscardHandler)})
	fs := srv.NewFastServer(NewHTTPServer(srv.Handler(), testTimeouts), testTimeouts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- fs.Serve(ln) }()
	auth := "Authorization: " + sidecartest.Basic("apk-fast", f.Secrets["apk-fast"])

	idle, idleBr := dialRaw(t, ln.Addr().String())
	if _, err := io.WriteString(idle, rawRequest("GET /r/quick HTTP/1.1", "Host: app", auth)); err != nil {
		t.Fatal(err)
	}
	if _, body := readResp(t, idleBr, "GET"); body != "done /r/quick" {
		t.Fatalf("quick: %q", body)
	}
	busy, busyBr := dialRaw(t, ln.Addr().String())
	if _, err := io.WriteString(busy, rawRequest("GET /r/slow HTTP/1.1", "Host: app", auth)); err != nil {
		t.Fatal(err)
	}
	// Shut down once the slow request is in flight (the upstream has it).
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request never reached the upstream")
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- fs.Shutdown(ctx)
	}()
	if n, err := idleBr.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("idle connection not closed on shutdown: %d %v", n, err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned with a request in flight: %v", err)
	default:
	}
	close(release)
	if resp, body := readResp(t, busyBr, "GET"); resp.StatusCode != 200 || body != "done /r/slow" {
		t.Fatalf("in-flight request: %d %q", resp.StatusCode, body)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Fatal("the listener still accepts after Shutdown")
	}
}

// TestFastPathRequestsOwnTheirHead: a connection reuses one head buffer and
// one request state for its requests (nothing allocated per request), so
// each pipelined request must reach the upstream with its own path, fields,
// body and request ID, also when a large body refills the read buffer in
// between.
func TestFastPathRequestsOwnTheirHead(t *testing.T) {
	type seen struct{ path, tag, id, key string }
	got := make(chan seen, 16)
	addr, auth, _ := fastFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if len(b) > 0 && string(b) != strings.Repeat(r.Header.Get("X-Tag")[:1], len(b)) {
			t.Errorf("%s: body %.20q...", r.URL.Path, b)
		}
		got <- seen{r.URL.Path, r.Header.Get("X-Tag"), r.Header.Get("X-Request-Id"), r.Header.Get(HeaderKeyID)}
	}))
	c, br := dialRaw(t, addr)
	var raw strings.Builder
	const n = 6
	for i := range n {
		tag := string(rune('a'+i)) + strconv.Itoa(i)
		body := ""
		if i%2 == 1 {
			body = strings.Repeat(tag[:1], 20<<10)
		}
		raw.WriteString(rawRequest("POST /r/"+tag+" HTTP/1.1", "Host: app", auth, "X-Tag: "+tag,
			"Content-Length: "+strconv.Itoa(len(body))) + body)
	}
	if _, err := io.WriteString(c, raw.String()); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for i := range n {
		if resp, body := readResp(t, br, "POST"); resp.StatusCode != http.StatusOK {
			t.Fatalf("response %d: %d %q", i, resp.StatusCode, body)
		}
		s := <-got
		tag := string(rune('a'+i)) + strconv.Itoa(i)
		if s.path != "/r/"+tag || s.tag != tag || s.key != "apk-fast" || s.id == "" || ids[s.id] {
			t.Fatalf("request %d reached the upstream as %+v (IDs so far %v)", i, s, ids)
		}
		ids[s.id] = true
	}
}

// TestFastPathLargeBodies: a large Content-Length response goes socket to
// socket (splice on Linux): exactly its bytes reach the client, nothing past
// it is read from the upstream, and both connections carry the next
// requests; a body the upstream cuts short ends the client's connection
// without another byte.
func TestFastPathLargeBodies(t *testing.T) {
	sized := strings.Repeat("0123456789abcdef", 1<<16) + "end" // 1 MiB + 3
	var conns atomic.Int32
	addr, auth, _ := fastFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/r/sized":
			w.Header().Set("Content-Length", strconv.Itoa(len(sized)))
			_, _ = io.WriteString(w, sized)
		case "/r/short":
			// Declares more than it sends, then drops the connection.
			w.Header().Set("Content-Length", strconv.Itoa(len(sized)))
			_, _ = io.WriteString(w, sized[:300<<10])
			w.(http.Flusher).Flush()
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = c.Close()
			}
		case "/r/upload":
			b, _ := io.ReadAll(r.Body)
			_, _ = io.WriteString(w, "got "+strconv.Itoa(len(b))+" "+strconv.FormatBool(string(b) == sized))
		case "/r/refuse":
			// Reads a little of a large upload, then drops the connection.
			_, _ = io.ReadFull(r.Body, make([]byte, 100<<10))
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = c.Close()
			}
		default:
			_, _ = io.WriteString(w, "small")
		}
	}), countConns(http.StateNew, &conns))
	c, br := dialRaw(t, addr)
	req := func(path string) string { return rawRequest("GET "+path+" HTTP/1.1", "Host: app", auth) }
	// Pipelined: the small response after the large one must come intact.
	if _, err := io.WriteString(c, req("/r/sized")+req("/r/x")+req("/r/sized")); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{sized, "small", sized} {
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || body != want || resp.ContentLength != int64(len(want)) {
			t.Fatalf("response %d: %d, %d bytes (want %d), Content-Length %d", i, resp.StatusCode, len(body), len(want), resp.ContentLength)
		}
	}
	// A large upload, with a request pipelined right behind its body.
	post := func(path string, n int) string {
		return rawRequest("POST "+path+" HTTP/1.1", "Host: app", auth, "Content-Length: "+strconv.Itoa(n))
	}
	if _, err := io.WriteString(c, post("/r/upload", len(sized))+sized+req("/r/x")); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"got " + strconv.Itoa(len(sized)) + " true", "small"} {
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("after the upload, response %d: %d %q, want %q", i, resp.StatusCode, body, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("the upstream saw %d connections, want 1 kept alive", n)
	}
	// An upload the client cuts short: 400, and the connection ends.
	cut, cutBR := dialRaw(t, addr)
	if _, err := io.WriteString(cut, post("/r/upload", len(sized))+sized[:200<<10]); err != nil {
		t.Fatal(err)
	}
	_ = cut.(*net.TCPConn).CloseWrite()
	if resp, body := readResp(t, cutBR, "POST"); resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("cut-short upload: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	// An upstream that drops the connection mid-upload: 502 to a client
	// that is still there.
	big := strings.Repeat(sized, 8)
	drop, dropBR := dialRaw(t, addr)
	go func() { _, _ = io.WriteString(drop, post("/r/refuse", len(big))+big) }()
	if resp, body := readResp(t, dropBR, "POST"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("upstream dropped the upload: %d %q", resp.StatusCode, body)
	}
	if _, err := io.WriteString(c, req("/r/short")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || n >= int64(len(sized)) {
		t.Fatalf("cut-short body: %d bytes, %v; want fewer than %d and an error", n, err, len(sized))
	}
	// A new connection is served as usual.
	c2, br2 := dialRaw(t, addr)
	if _, err := io.WriteString(c2, req("/r/sized")); err != nil {
		t.Fatal(err)
	}
	if resp, body := readResp(t, br2, "GET"); resp.StatusCode != 200 || body != sized {
		t.Fatalf("after the cut: %d, %d bytes", resp.StatusCode, len(body))
	}
}
