package wire

import (
	"bufio"
	"errors"
	"net/http"
	"strconv"
)

// MaxResponseHead bounds an upstream response head (net/http's Transport
// allows 10 MiB; 1 MiB is plenty and bounds what a broken upstream costs).
const MaxResponseHead = 1 << 20

// Errors of a response the upstream got wrong (answered 502).
var (
	ErrResponseHead   = errors.New("wire: malformed upstream response head")
	ErrResponseTooBig = errors.New("wire: upstream response head too large")
	ErrChunked        = errors.New("wire: malformed chunked upstream response body")
)

// Framing is how a response body ends.
type Framing int

// Response body framings.
const (
	NoBody Framing = iota
	Length
	Chunked
	UntilClose
)

// Response is an upstream response head read by ReadResponse.
type Response struct {
	Status        int
	Framing       Framing
	ContentLength int64
	// KeepAlive: the upstream connection may carry another request after
	// this response's body.
	KeepAlive bool
}

// ReadResponse reads an upstream response head from br and appends to out
// the head to send the client: an HTTP/1.1 status line, the fields without
// hop-by-hop ones (RFC 9110 §7.6.1: Connection, the fields it names,
// Keep-Alive, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE,
// Trailer, Transfer-Encoding, Upgrade), Content-Length only when it frames
// the body, Transfer-Encoding: chunked when the body is chunked, and a Date
// when the upstream sent none. It does not end the head: the caller appends
// its own fields and the blank line. scratch is reused for the raw lines.
// A 1xx response is returned like any other (Framing NoBody).
func ReadResponse(br *bufio.Reader, method string, out, scratch []byte, date []byte) (Response, []byte, []byte, error) {
	var res Response
	raw := scratch[:0]
	var ends [MaxHeaders * 2]int
	lines := ends[:0]
	for {
		l, err := br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if len(raw) == 0 && len(l) == 0 {
				return res, out, raw, err
			}
			return res, out, raw, ErrResponseHead
		}
		raw = append(raw, l...)
		if len(raw) > MaxResponseHead {
			return res, out, raw, ErrResponseTooBig
		}
		if err != nil { // line longer than the buffer: keep reading it
			continue
		}
		lines = append(lines, len(raw))
		n := len(raw) - 1
		if n > 0 && raw[n-1] == '\r' {
			n--
		}
		start := 0
		if len(lines) > 1 {
			start = lines[len(lines)-2]
		}
		if n == start {
			break
		}
	}
	line := func(i int) []byte {
		start := 0
		if i > 0 {
			start = lines[i-1]
		}
		b := raw[start:lines[i]]
		b = b[:len(b)-1]
		if len(b) > 0 && b[len(b)-1] == '\r' {
			b = b[:len(b)-1]
		}
		return b
	}
	status := line(0)
	if len(status) < 12 || string(status[:7]) != "HTTP/1." || (status[7] != '0' && status[7] != '1') || status[8] != ' ' {
		return res, out, raw, ErrResponseHead
	}
	code, err := strconv.Atoi(string(status[9:12]))
	if err != nil || code < 100 || code > 999 || len(status) > 12 && status[12] != ' ' {
		return res, out, raw, ErrResponseHead
	}
	res.Status = code
	res.KeepAlive = status[7] == '1'

	// Connection options: close, keep-alive and the names of further
	// hop-by-hop fields.
	var dropped [8][]byte
	drops := dropped[:0]
	chunked, lengths, hasDate := false, 0, false
	var length int64
	for i := 1; i < len(lines)-1; i++ {
		name, value, ok := splitFieldBytes(line(i))
		if !ok {
			return res, out, raw, ErrResponseHead
		}
		switch {
		case equalFold(name, "connection"):
			for _, tok := range commaList(value) {
				switch {
				case equalFold(tok, "close"):
					res.KeepAlive = false
				case equalFold(tok, "keep-alive"):
				case len(drops) < cap(drops):
					drops = append(drops, tok)
				default:
					return res, out, raw, ErrResponseHead
				}
			}
		case equalFold(name, "transfer-encoding"):
			if chunked || !equalFold(value, "chunked") {
				return res, out, raw, ErrResponseHead
			}
			chunked = true
		case equalFold(name, "content-length"):
			n, ok := parseLength(string(value))
			if !ok || lengths > 0 && n != length {
				return res, out, raw, ErrResponseHead
			}
			lengths++
			length = n
		}
	}

	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(code)...)
	out = append(out, "\r\n"...)
	for i := 1; i < len(lines)-1; i++ {
		l := line(i)
		name, value, _ := splitFieldBytes(l)
		if hopByHop(name) || named(drops, name) || equalFold(name, "content-length") {
			continue
		}
		if equalFold(name, "date") {
			hasDate = true
		}
		out = append(out, name...)
		out = append(out, ": "...)
		out = append(out, value...)
		out = append(out, "\r\n"...)
	}
	if !hasDate && date != nil {
		out = append(out, "Date: "...)
		out = append(out, date...)
		out = append(out, "\r\n"...)
	}
	switch {
	case code < 200 || code == http.StatusNoContent || code == http.StatusNotModified || method == http.MethodHead:
		res.Framing = NoBody
		if lengths > 0 && code >= 200 && code != http.StatusNoContent {
			out = appendLength(out, length)
		}
	case chunked:
		res.Framing = Chunked
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	case lengths > 0:
		res.Framing, res.ContentLength = Length, length
		out = appendLength(out, length)
	default:
		res.Framing = UntilClose
		res.KeepAlive = false
	}
	if code == http.StatusSwitchingProtocols {
		return res, out, raw, ErrResponseHead // never asked for
	}
	return res, out, raw, nil
}

func appendLength(out []byte, n int64) []byte {
	out = append(out, "Content-Length: "...)
	out = strconv.AppendInt(out, n, 10)
	return append(out, "\r\n"...)
}

var hopHeaders = [...]string{"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
	"proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"}

func hopByHop(name []byte) bool {
	for _, h := range hopHeaders {
		if equalFold(name, h) {
			return true
		}
	}
	return false
}

func named(list [][]byte, name []byte) bool {
	for _, n := range list {
		if len(n) == len(name) && foldEqual(n, name) {
			return true
		}
	}
	return false
}

func foldEqual(a, b []byte) bool {
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// commaList splits a comma-separated field value, dropping empty elements.
func commaList(v []byte) [][]byte {
	var out [][]byte
	for len(v) > 0 {
		i := 0
		for i < len(v) && v[i] != ',' {
			i++
		}
		el := trimOWS(v[:i])
		if len(el) > 0 {
			out = append(out, el)
		}
		if i == len(v) {
			break
		}
		v = v[i+1:]
	}
	return out
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

func splitFieldBytes(line []byte) (name, value []byte, ok bool) {
	i := 0
	for i < len(line) && isTokenChar(line[i]) {
		i++
	}
	if i == 0 || i == len(line) || line[i] != ':' {
		return nil, nil, false
	}
	v := trimOWS(line[i+1:])
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, false
		}
	}
	return line[:i], v, true
}
