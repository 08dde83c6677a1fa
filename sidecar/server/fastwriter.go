package server

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// fastWriter is the fast path's http.ResponseWriter for the answers the
// sidecar writes itself (refusals, the token endpoint): the whole response
// is buffered and leaves in one write, with Content-Length, Date and, when
// the connection ends after it, Connection: close — what net/http adds. A
// forwarded request is written by forwardFast instead (forwarded is set).
type fastWriter struct {
	fc     *fastConn
	h      http.Header
	status int
	body   []byte
	head   bool
	// close: the connection ends after this response.
	close bool
	// forwarded: forwardFast wrote the response; abort: it could not finish
	// it (the connection must end without another byte).
	forwarded, abort bool
}

func (w *fastWriter) reset(head, close bool) {
	if w.h == nil {
		w.h = make(http.Header, 8)
	}
	clear(w.h)
	w.status, w.body, w.head, w.close, w.forwarded, w.abort = 0, w.body[:0], head, close, false, false
}

func (w *fastWriter) Header() http.Header { return w.h }

func (w *fastWriter) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return // informational responses are not sent on this path
	}
	w.status = code
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

// finish writes the buffered response.
func (w *fastWriter) finish() error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if connectionClose(w.h) {
		w.close = true
	}
	delete(w.h, "Connection")
	delete(w.h, "Transfer-Encoding")
	if len(w.body) > 0 && w.h["Content-Type"] == nil {
		w.h["Content-Type"] = []string{http.DetectContentType(w.body)}
	}
	bodyAllowed := w.status != http.StatusNoContent && w.status != http.StatusNotModified
	out := w.fc.out[:0]
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(w.status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(w.status)...)
	out = append(out, "\r\n"...)
	for k, vs := range w.h {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			out = appendField(out, k, v)
		}
	}
	if bodyAllowed {
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, int64(len(w.body)), 10)
		out = append(out, "\r\n"...)
	}
	if w.h["Date"] == nil {
		out = append(out, "Date: "...)
		out = append(out, httpDate()...)
		out = append(out, "\r\n"...)
	}
	if w.close {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	if bodyAllowed && !w.head {
		out = append(out, w.body...)
	}
	w.fc.out = out
	_, err := w.fc.c.Write(out)
	return err
}

// connectionClose reports a Connection: close the chain set.
func connectionClose(h http.Header) bool {
	for _, v := range h["Connection"] {
		if v == "close" {
			return true
		}
	}
	return false
}

// appendField appends "k: v\r\n", with any CR, LF or NUL in v replaced by a
// space (net/http does the same for response fields).
func appendField(out []byte, k, v string) []byte {
	out = append(out, k...)
	out = append(out, ": "...)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' || c == 0 {
			c = ' '
		}
		out = append(out, c)
	}
	return append(out, "\r\n"...)
}

// httpDate is the current time in the Date field's format, formatted once
// per second.
func httpDate() []byte {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateText{unix: now, text: time.Unix(now, 0).UTC().AppendFormat(nil, http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	unix int64
	text []byte
}

var cachedDate atomic.Pointer[dateText]
