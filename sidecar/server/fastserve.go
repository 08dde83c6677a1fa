package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/keygate-dev/keygate/sidecar/wire"
)

// The fast path serves plain HTTP/1.1 requests on the main listener without
// net/http's server and Transport: each connection's goroutine reads request
// heads into its own buffer (package wire, a strict subset of RFC 9112),
// runs the very same handler chain as net/http does (the chain sees an
// *http.Request either way), and, when the chain forwards, writes the
// request to a pooled upstream keep-alive connection and streams the
// response back from the same goroutine (fastproxy.go). Any request outside
// wire's subset — HTTP/1.0, chunked or Expect bodies, Upgrade (WebSockets),
// h2c, absolute-form or unusual targets, anything malformed, heads over the
// read buffer — hands the connection, with the bytes already read, to
// net/http for the rest of its life. The fast path never refuses a request
// itself, so net/http stays the judge of everything odd.

// fastReadBuffer bounds a fast-path request head; longer ones go to net/http.
// fastWriteBuffer is the most of a response that leaves in one write with its
// head. Both are held for the connection's life (16 KiB per connection).
const (
	fastReadBuffer  = 8 << 10
	fastWriteBuffer = 8 << 10
)

// FastServer serves a plain (not TLS) listener with the fast path in front of
// an http.Server whose Handler is the Server's.
type FastServer struct {
	srv     *Server
	hs      *http.Server
	t       Timeouts
	handoff *handoffListener
	ln      net.Listener

	mu       sync.Mutex
	conns    map[*fastConn]struct{}
	shutdown atomic.Bool
	wg       sync.WaitGroup
}

// NewFastServer returns the fast path for s in front of hs (built by
// NewHTTPServer with s.Handler() and the same timeouts t).
func (s *Server) NewFastServer(hs *http.Server, t Timeouts) *FastServer {
	return &FastServer{srv: s, hs: hs, t: t, conns: map[*fastConn]struct{}{}}
}

// Serve accepts connections on ln until Shutdown or Close; like
// http.Server.Serve it returns http.ErrServerClosed then.
func (f *FastServer) Serve(ln net.Listener) error {
	if f.srv.opts.UpstreamH2C {
		// The fast path speaks HTTP/1.1 to the upstream only.
		return f.hs.Serve(ln)
	}
	f.mu.Lock()
	f.ln = ln
	f.handoff = newHandoffListener(ln.Addr())
	f.mu.Unlock()
	if f.shutdown.Load() {
		_ = ln.Close()
		return http.ErrServerClosed
	}
	go func() { _ = f.hs.Serve(f.handoff) }()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.shutdown.Load() {
				return http.ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			_ = f.handoff.Close()
			return err
		}
		delay = 0
		fc := f.track(c)
		if fc == nil {
			_ = c.Close()
			continue
		}
		go f.serveConn(fc)
	}
}

// Shutdown stops accepting, closes idle connections, lets requests in
// flight finish (bounded by ctx) and shuts the net/http server down.
func (f *FastServer) Shutdown(ctx context.Context) error {
	f.shutdown.Store(true)
	f.mu.Lock()
	if f.ln != nil {
		_ = f.ln.Close()
	}
	f.mu.Unlock()
	herr := f.hs.Shutdown(ctx)
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		f.closeIdle()
		select {
		case <-done:
			f.srv.fast.closeIdle()
			return herr
		case <-ctx.Done():
			f.closeAll()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close closes the listener and every connection at once.
func (f *FastServer) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = f.hs.Close()
	_ = f.Shutdown(ctx)
	return nil
}

func (f *FastServer) track(c net.Conn) *fastConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shutdown.Load() {
		return nil
	}
	fc := newFastConn(f, c)
	f.conns[fc] = struct{}{}
	f.wg.Add(1)
	return fc
}

func (f *FastServer) untrack(fc *fastConn) {
	f.mu.Lock()
	delete(f.conns, fc)
	f.mu.Unlock()
	f.wg.Done()
}

func (f *FastServer) closeIdle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		if fc.idle.Load() {
			_ = fc.c.Close()
		}
	}
}

func (f *FastServer) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		_ = fc.c.Close()
	}
}

// fastConn is one client connection on the fast path, with everything its
// requests reuse.
type fastConn struct {
	f      *FastServer
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	remote string
	idle   atomic.Bool
	// rd and wd are the connection's read and write deadlines.
	rd, wd connDeadline

	req wire.Request
	// base carries the context with st, the request state the chain
	// reuses for each request of the connection; hreq starts as a copy.
	base *http.Request
	st   request
	hreq http.Request
	url  url.URL
	w    fastWriter
	body fastBody
	// head holds the current request's head: fc.req's strings alias it,
	// so it is rewritten only once the request is done.
	head []byte
	// lr limits a response body copied socket to socket (copyLength).
	lr io.LimitedReader
	// out is the request head forwarded (or a local answer), resp the
	// response head sent, scratch the upstream's raw response head.
	out, resp, scratch []byte
}

func newFastConn(f *FastServer, c net.Conn) *fastConn {
	fc := &fastConn{f: f, c: c, remote: c.RemoteAddr().String(),
		br: bufio.NewReaderSize(c, fastReadBuffer), bw: bufio.NewWriterSize(c, fastWriteBuffer)}
	fc.w.fc = fc
	fc.rd.set, fc.wd.set = c.SetReadDeadline, c.SetWriteDeadline
	fc.base = (&http.Request{}).WithContext(context.WithValue(context.Background(), ctxKey{}, &fc.st))
	return fc
}

func (f *FastServer) serveConn(fc *fastConn) {
	handedOff := false
	defer func() {
		clear(fc.head)
		if !handedOff {
			_ = fc.c.Close()
		}
		f.untrack(fc)
	}()
	first := true
	for {
		// Wait for the next request: ReadHeader for the first, Idle after.
		wait := f.t.Idle
		if first || wait == 0 {
			wait = f.t.ReadHeader
		}
		fc.rd.arm(time.Now(), wait)
		fc.idle.Store(true)
		if _, err := fc.br.Peek(1); err != nil {
			return
		}
		fc.idle.Store(false)
		if f.shutdown.Load() {
			return
		}
		start := time.Now()
		// The header deadline is set only when the head did not arrive
		// with its first bytes (the first request waited under it already).
		n, err := fc.readHead(func() {
			if !first {
				fc.rd.arm(time.Now(), f.t.ReadHeader)
			}
		})
		first = false
		if err != nil && (!errors.Is(err, io.EOF) || fc.br.Buffered() == 0) {
			return // a timeout or a reset: net/http would close too
		}
		if n <= 0 { // unusual, or cut short: net/http answers
			handedOff = f.handOff(fc)
			return
		}
		// The head is copied into the connection's own buffer, which the
		// parsed request's strings alias until the request is done (the
		// read buffer is refilled as the body is read).
		b, _ := fc.br.Peek(n)
		fc.head = append(fc.head[:0], b...)
		if !wire.ParseRequest(aliasBytes(fc.head), &fc.req) {
			handedOff = f.handOff(fc)
			return
		}
		_, _ = fc.br.Discard(n)
		// A body still to come is read under --read-timeout from the start
		// of the request; with none, the connection is not read again
		// before the next request's deadline is set.
		if fc.req.ContentLength > int64(fc.br.Buffered()) {
			fc.rd.arm(start, f.t.Read)
		}
		fc.wd.arm(start, f.t.Write)
		ok := fc.serveRequest()
		// Credentials in the head are not left in memory.
		clear(fc.head)
		if !ok {
			return
		}
	}
}

// aliasBytes returns b's bytes as a string without copying. Only for
// buffers owned by a request, or a connection, whose strings nothing keeps
// past the request (the chain copies what it keeps: failure-limit subjects,
// cached tokens); b must not change while the string is in use.
func aliasBytes(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b)) //nolint:gosec // G103: see above; the buffers outlive every use of the strings
}

// connDeadline is one direction's deadline on a connection. Re-arming a
// deadline updates a runtime timer, which showed in profiles at two or three
// per request: a deadline that would only move later, by less than 1/64 of
// its timeout, is left where it is. A timeout can so end up to 1/64 early
// (under 2 s of the 2-minute idle timeout), never late.
type connDeadline struct {
	set func(time.Time) error
	at  time.Time
}

// arm sets the deadline to timeout after now (no deadline for 0).
func (d *connDeadline) arm(now time.Time, timeout time.Duration) {
	at := time.Time{}
	if timeout > 0 {
		at = now.Add(timeout)
		if !d.at.IsZero() && !at.Before(d.at) && at.Sub(d.at) < timeout/64 {
			return
		}
	} else if d.at.IsZero() {
		return
	}
	d.at = at
	_ = d.set(at)
}

// readHead waits until the buffer holds a complete request head and returns
// its length (calling beforeWait once before it first waits for more bytes),
// or -1 when the head is not for the fast path (longer than the
// buffer, a bare LF or CR).
func (fc *fastConn) readHead(beforeWait func()) (int, error) {
	for waited := false; ; waited = true {
		b, _ := fc.br.Peek(fc.br.Buffered())
		if n := wire.HeadEnd(b); n != 0 {
			return n, nil
		}
		if len(b) == fc.br.Size() {
			return -1, nil
		}
		if !waited {
			beforeWait()
		}
		if _, err := fc.br.Peek(len(b) + 1); err != nil {
			return 0, err
		}
	}
}

// handOff gives the connection and the bytes read so far to net/http.
func (f *FastServer) handOff(fc *fastConn) bool {
	pending, _ := fc.br.Peek(fc.br.Buffered())
	pc := &prefixConn{Conn: fc.c, pending: append([]byte(nil), pending...)}
	_ = fc.c.SetDeadline(time.Time{})
	return f.handoff.push(pc)
}

// serveRequest runs the chain on the parsed request; it reports whether the
// connection may carry another request.
func (fc *fastConn) serveRequest() bool {
	p := &fc.req
	if !wire.ParseTarget(p.Target, &fc.url) {
		// plainTarget admits nothing url refuses; stay safe regardless.
		return false
	}
	fc.body.reset(fc.br, p.ContentLength)
	r := &fc.hreq
	*r = *fc.base
	r.Method, r.URL, r.Proto, r.ProtoMajor, r.ProtoMinor = p.Method, &fc.url, "HTTP/1.1", 1, 1
	r.Header, r.ContentLength, r.Host, r.RemoteAddr = p.Header, p.ContentLength, p.Host, fc.remote
	r.RequestURI, r.Close, r.Body = p.Target, p.Close, http.NoBody
	if p.ContentLength > 0 {
		r.Body = &fc.body
	}
	w := &fc.w
	w.reset(p.Method == http.MethodHead, p.Close)
	fc.f.srv.handler.ServeHTTP(w, r)
	if w.abort {
		return false
	}
	if !w.forwarded {
		if err := w.finish(); err != nil {
			return false
		}
	}
	if w.close {
		return false
	}
	// A body the chain did not read (a refusal): read it away, as net/http
	// does up to 256 KiB, or close.
	if fc.body.n > 0 {
		if fc.body.n > 256<<10 {
			return false
		}
		if _, err := io.Copy(io.Discard, &fc.body); err != nil || fc.body.err != nil {
			return false
		}
	}
	return fc.body.err == nil
}

// fastBody is a Content-Length request body read from the connection.
type fastBody struct {
	br  *bufio.Reader
	n   int64
	err error
}

func (b *fastBody) reset(br *bufio.Reader, n int64) { b.br, b.n, b.err = br, n, nil }

func (b *fastBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		b.err = err
		return n, err
	}
	return n, nil
}

func (b *fastBody) Close() error { return nil }

// handoffListener hands connections the fast path gave up on to net/http.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// prefixConn replays the bytes the fast path read before handing off.
type prefixConn struct {
	net.Conn
	pending []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
