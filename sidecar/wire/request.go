// Package wire reads and writes the HTTP/1.1 forms the sidecar's fast path
// handles itself. It is deliberately narrow: ParseRequest accepts a strict
// subset of RFC 9112 (the plain requests almost every client sends) and
// reports anything else as unusual, for net/http to serve. It never refuses a
// request itself, so the fast path can never be more permissive, or answer
// differently, than net/http on input it does not fully understand.
package wire

import (
	"bytes"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// MaxHeaders is the most header fields a fast-path request may carry.
const MaxHeaders = 64

// Request is a request head parsed by ParseRequest. Its strings point into
// the head string passed to it.
type Request struct {
	Method string
	// Target is the origin-form request target (path and query).
	Target        string
	Host          string
	ContentLength int64
	// Close: the client sent Connection: close.
	Close bool
	// Header holds the fields other than Host, canonical names, in order.
	Header http.Header
	vals   []string
}

// methods are the methods the fast path serves (anything else, CONNECT and
// PRI above all, goes to net/http).
var methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}

// HeadEnd returns the length of the request head at the start of b (through
// its blank line) once it is complete, 0 when more bytes are needed, and -1
// when b holds a line ending that is not CRLF (a bare LF or CR: the fast path
// leaves such heads to net/http).
func HeadEnd(b []byte) int {
	// Line by line with IndexByte (vectorised): every LF must follow a CR,
	// and no CR may stand before anything but an LF.
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			// The last line so far: a CR only as its last byte (the LF may
			// be still to come).
			if k := bytes.IndexByte(b[i:], '\r'); k >= 0 && i+k != len(b)-1 {
				return -1
			}
			return 0
		}
		j += i
		if j == 0 || b[j-1] != '\r' || bytes.IndexByte(b[i:j-1], '\r') >= 0 {
			return -1
		}
		if j >= 3 && b[j-2] == '\n' {
			return j + 1
		}
		i = j + 1
	}
}

// ParseRequest parses a complete head (as measured by HeadEnd) into r,
// reusing r's header map. It returns false when the request is outside the
// fast path's subset: a method other than the common ones, a target that is
// not origin-form with plain characters, a version other than HTTP/1.1, a
// missing or repeated Host, a Content-Length that is not one run of digits,
// Transfer-Encoding, Upgrade, Expect, TE, Trailer, HTTP2-Settings, a
// Connection other than close or keep-alive, obs-fold, whitespace before a
// colon, a control byte anywhere, or more than MaxHeaders fields.
func ParseRequest(head string, r *Request) bool {
	if r.Header == nil {
		r.Header = make(http.Header, 16)
	}
	clear(r.Header)
	r.vals = r.vals[:0]
	r.Host, r.ContentLength, r.Close = "", 0, false

	line, rest, ok := cutLine(head)
	if !ok || !parseRequestLine(line, r) {
		return false
	}
	hosts, lengths := 0, 0
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			return false
		}
		if line == "" {
			break
		}
		name, value, ok := splitField(line)
		if !ok || len(r.vals) == MaxHeaders {
			return false
		}
		switch len(name) {
		case 2:
			if equalFold(name, "te") {
				return false
			}
		case 4:
			if equalFold(name, "host") {
				if hosts++; hosts > 1 || !httpguts.ValidHostHeader(value) {
					return false
				}
				r.Host = value
				continue
			}
		case 6:
			if equalFold(name, "expect") {
				return false
			}
		case 7:
			if equalFold(name, "upgrade") || equalFold(name, "trailer") {
				return false
			}
		case 10:
			if equalFold(name, "connection") {
				switch {
				case equalFold(value, "close"):
					r.Close = true
				case equalFold(value, "keep-alive"):
				default:
					return false
				}
			}
		case 14:
			if equalFold(name, "content-length") {
				n, ok := parseLength(value)
				if lengths++; !ok || lengths > 1 {
					return false
				}
				r.ContentLength = n
			} else if equalFold(name, "http2-settings") {
				return false
			}
		case 17:
			if equalFold(name, "transfer-encoding") {
				return false
			}
		}
		key := name
		if !canonical(name) {
			key = http.CanonicalHeaderKey(name)
		}
		r.vals = append(r.vals, value)
		if prior, ok := r.Header[key]; ok {
			r.Header[key] = append(prior, value)
		} else {
			n := len(r.vals)
			r.Header[key] = r.vals[n-1 : n : n]
		}
	}
	return hosts == 1 && rest == ""
}

func parseRequestLine(line string, r *Request) bool {
	sp := -1
	for i := 0; i < len(line) && i < 8; i++ {
		if line[i] == ' ' {
			sp = i
			break
		}
	}
	if sp <= 0 {
		return false
	}
	r.Method = ""
	for _, m := range methods {
		if line[:sp] == m {
			r.Method = m
			break
		}
	}
	const version = " HTTP/1.1"
	if r.Method == "" || len(line) < sp+2+len(version) || line[len(line)-len(version):] != version {
		return false
	}
	r.Target = line[sp+1 : len(line)-len(version)]
	return plainTarget(r.Target)
}

// plainTarget accepts an origin-form target made of unreserved characters,
// sub-delims, ":", "@", "/", "?" and well-formed percent-encoding: the
// targets whose path and query url.ParseRequestURI reads without any
// rewriting, so the request line forwarded is byte for byte the one read.
func plainTarget(t string) bool {
	if t == "" || t[0] != '/' {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '%':
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
			i += 2
		default:
			switch c {
			case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@', '/', '?':
			default:
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// cutLine splits off one CRLF-terminated line.
func cutLine(s string) (line, rest string, ok bool) {
	i := strings.IndexByte(s, '\r')
	if i < 0 || i+1 == len(s) || s[i+1] != '\n' {
		return "", "", false
	}
	return s[:i], s[i+2:], true
}

// splitField splits "name: value": a token name directly followed by the
// colon, a value of visible characters, spaces, tabs and obs-text, with the
// optional whitespace around it removed.
func splitField(line string) (name, value string, ok bool) {
	i := 0
	for i < len(line) && isTokenChar(line[i]) {
		i++
	}
	if i == 0 || i == len(line) || line[i] != ':' {
		return "", "", false
	}
	name = line[:i]
	v := line[i+1:]
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	for j := 0; j < len(v); j++ {
		if c := v[j]; c < ' ' && c != '\t' || c == 0x7f {
			return "", "", false
		}
	}
	return name, v, true
}

func isTokenChar(c byte) bool {
	return c < 0x80 && httpguts.IsTokenRune(rune(c))
}

// canonical reports whether name is already in http.CanonicalHeaderKey form.
func canonical(name string) bool {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}

func parseLength(v string) (int64, bool) {
	if v == "" || len(v) > 15 {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// equalFold compares s (a string or bytes) with a lower-case ASCII name,
// ignoring case.
func equalFold[T string | []byte](s T, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// ParseTarget fills u as url.ParseRequestURI would for a target ParseRequest
// accepted, without allocating when the path needs no decoding.
func ParseTarget(target string, u *url.URL) bool {
	path, query, hasQuery := strings.Cut(target, "?")
	if strings.ContainsAny(path, "%!'()*") {
		parsed, err := url.ParseRequestURI(target)
		if err != nil {
			return false
		}
		*u = *parsed
		return true
	}
	*u = url.URL{Path: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	return true
}
