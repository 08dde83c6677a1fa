package server

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
)

// upstreamGot is one request as the recording upstream read it.
type upstreamGot struct {
	method, path string
	te           []string
	cl           int64
	body         string
	bodyErr      error
	keyID        string
	xa           string
}

// recordingUpstream records every request it reads, body and body error.
type recordingUpstream struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []upstreamGot
}

// newRecordingUpstream starts the upstream; each request is also passed to
// onRequest when it is not nil.
func newRecordingUpstream(t testing.TB, onRequest func(upstreamGot)) *recordingUpstream {
	t.Helper()
	u := &recordingUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		g := upstreamGot{method: r.Method, path: r.URL.Path, te: r.TransferEncoding, cl: r.ContentLength,
			body: string(b), bodyErr: err, keyID: r.Header.Get(HeaderKeyID), xa: r.Header.Get("X-A")}
		if onRequest != nil {
			onRequest(g)
		}
		u.mu.Lock()
		u.got = append(u.got, g)
		u.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "upstream saw "+r.URL.Path)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// requests closes the upstream (waiting for its handlers) and returns what
// it received.
func (u *recordingUpstream) requests() []upstreamGot {
	u.srv.Close()
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upstreamGot(nil), u.got...)
}

// lockedBuffer collects log output from concurrent handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// rawFront is a sidecar served by NewHTTPServer (the production listener
// setup) on a loopback listener, for tests that write raw bytes.
type rawFront struct {
	t       testing.TB
	fix     *bundletest.Fixture
	srv     *Server
	metrics *Metrics
	http    *http.Server
	addr    string
	logs    *lockedBuffer
	tlsConf *tls.Config
}

// testTimeouts are generous: tests end by the sidecar closing or answering.
var testTimeouts = Timeouts{ReadHeader: 10 * time.Second, Read: 10 * time.Second, Write: 10 * time.Second, Idle: 10 * time.Second}

// newRawFront serves the plain listener as production does: the fast path
// in front of net/http.
func newRawFront(t testing.TB, fix *bundletest.Fixture, upstream string, timeouts Timeouts) *rawFront {
	t.Helper()
	f := buildRawFront(t, fix, upstream, timeouts)
	f.addr = serveFastHTTP(t, f.srv, f.http, timeouts)
	return f
}

// newRawFrontNetHTTP serves the plain listener with net/http alone (the
// fast path turned off).
func newRawFrontNetHTTP(t testing.TB, fix *bundletest.Fixture, upstream string, timeouts Timeouts) *rawFront {
	t.Helper()
	f := buildRawFront(t, fix, upstream, timeouts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	go func() { _ = f.http.Serve(ln) }()
	t.Cleanup(func() { _ = f.http.Close() })
	return f
}

// newRawFrontTLS serves the same listener setup over TLS (HTTP/1.1 only),
// as --tls-cert-file does.
func newRawFrontTLS(t testing.TB, fix *bundletest.Fixture, upstream string) *rawFront {
	t.Helper()
	f := buildRawFront(t, fix, upstream, testTimeouts)
	ts := httptest.NewUnstartedServer(f.http.Handler)
	ts.Config = f.http
	ts.StartTLS()
	t.Cleanup(ts.Close)
	f.addr = ts.Listener.Addr().String()
	f.tlsConf = ts.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	f.tlsConf.NextProtos = []string{"http/1.1"}
	return f
}

func buildRawFront(t testing.TB, fix *bundletest.Fixture, upstream string, timeouts Timeouts) *rawFront {
	store := &config.Store{}
	if _, err := store.Update(fix.JSON()); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(upstream)
	f := &rawFront{t: t, fix: fix, logs: &lockedBuffer{}, metrics: NewMetrics(store)}
	log := slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	f.srv = New(Options{Store: store, Upstream: u, Metrics: f.metrics, Log: log, FailureLimit: 1000})
	f.http = NewHTTPServer(f.srv.Handler(), timeouts)
	return f
}

// dial connects to the front (over TLS for newRawFrontTLS).
func (f *rawFront) dial() (net.Conn, error) {
	if f.tlsConf != nil {
		return tls.Dial("tcp", f.addr, f.tlsConf)
	}
	return net.Dial("tcp", f.addr)
}

// decisions reads keygate_sidecar_decisions_total{result,reason}.
func (f *rawFront) decisions(result, reason string) float64 {
	return testutil.ToFloat64(f.metrics.decisions.WithLabelValues(result, reason))
}

// rawResult is what a client writing raw bytes saw.
type rawResult struct {
	status int
	header http.Header
	body   string
	// closed: the sidecar closed the connection after the first final
	// response (a probe request sent afterwards got no answer).
	closed bool
	// more is the number of further final responses read before the
	// connection ended (answers to pipelined requests or the probe).
	more int
}

const probe = "GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n"

// exchange writes raw, reads the first final response, then sends a probe
// request and reads until the connection ends or the probe is answered.
func (f *rawFront) exchange(raw string) rawResult {
	f.t.Helper()
	c, br, res := f.send(raw)
	defer func() { _ = c.Close() }()
	// Writing may fail once the sidecar has closed: that is an answer too.
	_, _ = io.WriteString(c, probe)
	for {
		resp, err := readFinal(br)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				f.t.Fatalf("connection neither answered the probe nor closed: %v", err)
			}
			res.closed = res.more == 0
			return res
		}
		body := readAll(resp)
		res.more++
		if body == probeAnswer {
			return res
		}
	}
}

// first writes raw and reads the first final response only.
func (f *rawFront) first(raw string) rawResult {
	f.t.Helper()
	c, _, res := f.send(raw)
	_ = c.Close()
	return res
}

// send dials the sidecar, writes raw and reads the first final response.
func (f *rawFront) send(raw string) (net.Conn, *bufio.Reader, rawResult) {
	f.t.Helper()
	c, err := f.dial()
	if err != nil {
		f.t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		f.t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := readFinal(br)
	if err != nil {
		_ = c.Close()
		f.t.Fatalf("no response: %v", err)
	}
	return c, br, rawResult{status: resp.StatusCode, header: resp.Header, body: readAll(resp)}
}

// readFinal reads the next non-1xx response.
func readFinal(br *bufio.Reader) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 {
			return resp, nil
		}
	}
}

func readAll(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return string(b)
}

const probeAnswer = "upstream saw /healthz"

// rawRequest builds a request head; headers are "Name: value" lines.
func rawRequest(requestLine string, headers ...string) string {
	var b strings.Builder
	b.WriteString(requestLine + "\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}
