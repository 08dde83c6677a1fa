package server

import (
	"errors"
	"io"
	"net/http"
	"sync"
)

// Request framing (RFC 9112 §6). net/http already refuses the ambiguous
// forms it can see: differing or comma-list Content-Length values (400),
// several Transfer-Encoding fields or any coding but a lone "chunked" (501),
// whitespace before a colon and obs-fold (400). What it cannot refuse is
// hidden from handlers: it drops Content-Length when chunked is present, and
// ignores Transfer-Encoding on HTTP/1.0 requests, deleting both headers
// before the handler runs. RFC 9112 §6.1 and §6.3 require the connection to
// be closed after such requests, so withFraming closes it after every
// request whose framing was not plain Content-Length (or no body): every
// chunked HTTP/1.1 request and every HTTP/1.0 request.

// withFraming is the outermost step of every listener's chain.
func withFraming(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mustClose(r) {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

// mustClose reports whether the connection must not be reused after r: a
// chunked body (Content-Length may have been sent beside it) or HTTP/1.0
// (Transfer-Encoding may have been sent and ignored).
func mustClose(r *http.Request) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	return r.ProtoMinor == 0 || len(r.TransferEncoding) > 0
}

// bodyGuard wraps an inbound request body and remembers the first read
// error that was not io.EOF: a malformed chunked body, a size limit, a
// client that went away. The proxy's error handler then knows the failure
// was the client's, not the upstream's.
type bodyGuard struct {
	rc  io.ReadCloser
	mu  sync.Mutex
	err error
}

func (g *bodyGuard) Read(p []byte) (int, error) {
	n, err := g.rc.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		g.mu.Lock()
		if g.err == nil {
			g.err = err
		}
		g.mu.Unlock()
	}
	return n, err
}

func (g *bodyGuard) Close() error { return g.rc.Close() }

func (g *bodyGuard) readErr() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// guardBody installs a bodyGuard on r (nil when r has no body).
func guardBody(r *http.Request) *bodyGuard {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	g := &bodyGuard{rc: r.Body}
	r.Body = g
	return g
}

// bodyFailure classifies a client body read error: 413 when a size limit
// was hit (a chunk-size or chunk-extension line over net/http's 4 KiB line
// limit, or a MaxBytesReader limit), else 400 (chunk size overflowing 64
// bits, a bare LF or CR in a chunk line, more chunk data than its size, a
// body cut short or timed out).
func bodyFailure(err error) (status int, reason string, body errorBody) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) || errors.Is(err, http.ErrLineTooLong) {
		return http.StatusRequestEntityTooLarge, "body_too_large",
			errorBody{Error: "request_too_large", Message: "request body exceeds a size limit"}
	}
	return http.StatusBadRequest, "malformed_body",
		errorBody{Error: "bad_request", Message: "request body is malformed or incomplete"}
}

// writeBodyFailure answers a request whose body could not be read, and
// closes the connection: its framing can no longer be trusted.
func (s *Server) writeBodyFailure(w http.ResponseWriter, r *http.Request, st *request, err error) {
	code, reason, body := bodyFailure(err)
	if st != nil {
		st.result, st.reason = "bad_request", reason
	}
	w.Header().Set("Connection", "close")
	writeError(w, r, code, body)
}
