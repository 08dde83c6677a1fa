package server

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/keygate-dev/keygate/sidecar/wire"
)

// upstreamPool keeps idle keep-alive connections to the upstream, used from
// the request's own goroutine (no per-request hand-off to read and write
// loops, as net/http's Transport has).
type upstreamPool struct {
	addr   string
	dialer net.Dialer
	mu     sync.Mutex
	idle   []*upConn
}

// maxIdleUpstream is the number of idle upstream connections kept (the
// Transport's MaxIdleConnsPerHost).
const maxIdleUpstream = 1024

type upConn struct {
	c  net.Conn
	br *bufio.Reader
}

func newUpstreamPool(u *url.URL) *upstreamPool {
	addr := ""
	if u != nil {
		addr = u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	return &upstreamPool{addr: addr, dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}
}

// get returns an idle connection (reused true) or a new one.
func (p *upstreamPool) get() (*upConn, bool, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		uc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return uc, true, nil
	}
	p.mu.Unlock()
	c, err := p.dialer.Dial("tcp", p.addr)
	if err != nil {
		return nil, false, err
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, 16<<10)}, false, nil
}

func (p *upstreamPool) put(uc *upConn) {
	p.mu.Lock()
	if len(p.idle) < maxIdleUpstream {
		p.idle = append(p.idle, uc)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	_ = uc.c.Close()
}

func (p *upstreamPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		_ = uc.c.Close()
	}
}

// fastHop are inbound fields net/http's ReverseProxy removes as hop-by-hop
// and the fast path lets through wire.ParseRequest (the others send a
// request to net/http).
var fastHop = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization"}

// errUpstreamHead wraps a failure before any byte of the response arrived.
var errUpstreamHead = errors.New("upstream closed the connection before responding")

// forwardFast proxies a request the chain allowed, from the fast path.
func (s *Server) forwardFast(w *fastWriter, r *http.Request) {
	fc := w.fc
	st := state(r)
	h := r.Header
	for _, k := range fastHop {
		delete(h, k)
	}
	forwardHeaders(r, h, st)

	out := fc.out[:0]
	out = append(out, r.Method...)
	out = append(out, ' ')
	out = append(out, r.RequestURI...)
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, r.Host...)
	out = append(out, "\r\n"...)
	for k, vs := range h {
		for _, v := range vs {
			out = appendField(out, k, v)
		}
	}
	if r.ContentLength > 0 || r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, r.ContentLength, 10)
		out = append(out, "\r\n"...)
	}
	out = append(out, "\r\n"...)
	// The body, or as much of it as is already read and fits, goes along
	// in the same write.
	if n := min(fc.body.n, int64(fc.br.Buffered()), int64(32<<10)); n > 0 {
		b, _ := fc.br.Peek(int(n))
		out = append(out, b...)
		_, _ = fc.br.Discard(int(n))
		fc.body.n -= n
	}
	fc.out = out
	replayable := fc.body.n == 0

	var uc *upConn
	var res wire.Response
	var head []byte
	for attempt := 0; ; attempt++ {
		var reused bool
		var err error
		uc, reused, err = s.fast.get()
		if err == nil {
			err = s.sendFast(w, r, st, uc)
			if w.forwarded || w.status != 0 { // the client's body failed
				return
			}
		}
		if err == nil {
			res, head, fc.scratch, err = wire.ReadResponse(uc.br, r.Method, fc.resp[:0], fc.scratch, httpDate())
			for err == nil && res.Status < 200 {
				// An informational response (103 Early Hints) goes ahead.
				fc.resp = append(head, "\r\n"...)
				if _, err = fc.c.Write(fc.resp); err != nil {
					_ = uc.c.Close()
					w.abort = true
					return
				}
				res, head, fc.scratch, err = wire.ReadResponse(uc.br, r.Method, fc.resp[:0], fc.scratch, httpDate())
			}
		}
		if err == nil {
			break
		}
		if uc != nil {
			_ = uc.c.Close()
		}
		// A kept-alive connection the upstream closed meanwhile: once more
		// on a new one, when the request can be sent again.
		if reused && replayable && attempt == 0 && (errors.Is(err, io.EOF) || isReset(err)) {
			continue
		}
		if errors.Is(err, io.EOF) {
			err = errUpstreamHead
		}
		s.proxyError(w, r, err)
		return
	}

	w.forwarded = true
	if res.Framing == wire.UntilClose {
		w.close = true
	}
	if w.close {
		head = append(head, "Connection: close\r\n"...)
	}
	head = append(head, "\r\n"...)
	fc.resp = head
	_, err := fc.bw.Write(head)
	switch {
	case err != nil:
	case res.Framing == wire.Length:
		err = fc.copyLength(uc, res.ContentLength)
	case res.Framing == wire.Chunked:
		err = wire.CopyChunked(fc.bw, uc.br)
	case res.Framing == wire.UntilClose:
		err = wire.CopyUntilClose(fc.bw, uc.br)
	}
	if err == nil {
		err = fc.bw.Flush()
	}
	if err != nil {
		// Mid-response: nothing can be said any more; both ends close
		// (net/http's ReverseProxy aborts the same way).
		_ = uc.c.Close()
		fc.bw.Reset(fc.c)
		w.abort = true
		s.log.Debug("Proxied response cut short", "error", err)
		return
	}
	if res.KeepAlive {
		s.fast.put(uc)
	} else {
		_ = uc.c.Close()
	}
}

// sendFast writes the request (fc.out, then the rest of the body) to the
// upstream. A failure to read the client's body is answered here (400/413,
// the connection closed) and leaves w.status set.
func (s *Server) sendFast(w *fastWriter, r *http.Request, st *request, uc *upConn) error {
	fc := w.fc
	if _, err := uc.c.Write(fc.out); err != nil {
		return err
	}
	if fc.body.n == 0 {
		return nil
	}
	if fc.body.n >= spliceMin && fc.br.Buffered() == 0 {
		if src, dst, ok := tcpPair(fc.c, uc.c); ok {
			return s.spliceBody(w, r, st, uc, src, dst)
		}
	}
	buf := fc.bw.AvailableBuffer()[:0]
	buf = buf[:cap(buf)]
	for fc.body.n > 0 {
		n, err := fc.body.Read(buf)
		if n > 0 {
			if _, werr := uc.c.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil && fc.body.n > 0 {
			_ = uc.c.Close()
			s.writeBodyFailure(w, r, st, err)
			return nil
		}
	}
	return nil
}

// spliceMin is the smallest response body copied with splice(2) between the
// two sockets (Linux; elsewhere io.Copy's fallback) rather than through the
// connection's buffers: below it the pipe's extra system calls cost more
// than the copies they save.
const spliceMin = 64 << 10

// copyLength copies a Content-Length response body of n bytes to the
// client. A large body between two TCP connections (the fast path serves
// plain TCP only) goes socket to socket through a pipe, never through user
// memory: first what the upstream's reader holds already, with the head,
// then exactly the rest, so nothing past the body is read (the upstream
// connection is kept alive as usual).
func (fc *fastConn) copyLength(uc *upConn, n int64) error {
	src, dst, ok := tcpPair(uc.c, fc.c)
	if n < spliceMin || !ok {
		return wire.CopyLength(fc.bw, uc.br, n)
	}
	if k := min(int64(uc.br.Buffered()), n); k > 0 {
		b, _ := uc.br.Peek(int(k))
		_, _ = fc.bw.Write(b)
		_, _ = uc.br.Discard(int(k))
		n -= k
	}
	if err := fc.bw.Flush(); err != nil {
		return err
	}
	fc.lr = io.LimitedReader{R: src, N: n}
	_, err := dst.ReadFrom(&fc.lr)
	if err == nil && fc.lr.N > 0 {
		err = io.ErrUnexpectedEOF
	}
	fc.lr.R = nil
	return err
}

// spliceBody sends the rest of a large request body (none of it buffered)
// socket to socket, exactly as many bytes as are left. A failure is the
// client's — answered 400 (or 408) like a failed read — when the body ended
// early, on the read timeout (only the client's side has a deadline), or
// when the client's connection is gone; otherwise the upstream's.
func (s *Server) spliceBody(w *fastWriter, r *http.Request, st *request, uc *upConn, src, dst *net.TCPConn) error {
	fc := w.fc
	fc.lr = io.LimitedReader{R: src, N: fc.body.n}
	_, err := dst.ReadFrom(&fc.lr)
	fc.body.n, fc.lr.R = fc.lr.N, nil
	switch {
	case err == nil && fc.body.n == 0:
		return nil
	case err == nil:
		err = io.ErrUnexpectedEOF
	case !isTimeout(err) && !connGone(src):
		return err
	}
	fc.body.err = err
	_ = uc.c.Close()
	s.writeBodyFailure(w, r, st, err)
	return nil
}

// tcpPair returns src and dst as TCP connections, the pair splice(2) works
// between.
func tcpPair(src, dst net.Conn) (*net.TCPConn, *net.TCPConn, bool) {
	s, ok := src.(*net.TCPConn)
	d, ok2 := dst.(*net.TCPConn)
	return s, d, ok && ok2
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}
