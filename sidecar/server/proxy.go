package server

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/keygate-dev/keygate/sidecar/config"
)

// BufferPool lends a reverse proxy its copy buffers (httputil.BufferPool).
type BufferPool struct{ p sync.Pool }

// Get returns a 32 KiB buffer.
func (b *BufferPool) Get() []byte {
	if v := b.p.Get(); v != nil {
		return *(v.(*[]byte))
	}
	return make([]byte, 32<<10)
}

// Put returns buf to the pool.
func (b *BufferPool) Put(buf []byte) { b.p.Put(&buf) }

// NewTransport returns the pooled keep-alive transport to the upstream.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
}

func newProxy(upstream *url.URL, s *Server) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.Out.Host = pr.In.Host
			forwardHeaders(pr.In, pr.Out.Header, state(pr.In))
		},
		Transport:    NewTransport(),
		BufferPool:   &BufferPool{},
		ErrorHandler: s.proxyError,
	}
}

// forwardHeaders turns h into the header the upstream gets, on both paths:
// h is the inbound header without its hop-by-hop fields (httputil's copy, or
// on the fast path the inbound map itself), in the inbound request.
func forwardHeaders(in *http.Request, h http.Header, st *request) {
	// X-Forwarded-For is kept only from a trusted proxy; X-Forwarded-Host
	// and -Proto are the sidecar's (httputil.ProxyRequest.SetXForwarded).
	var prior []string
	if st != nil && st.rt != nil && len(st.rt.Resolver.Trusted) > 0 {
		if peer, ok := peerTrusted(st.rt, in.RemoteAddr); ok && peer {
			prior = in.Header["X-Forwarded-For"]
		}
	}
	// One-value fields share the request state's backing array (no
	// allocation per field).
	var spare []string
	if st != nil {
		spare = st.vals[:0:len(st.vals)]
	}
	set := func(k, v string) {
		if len(spare) == cap(spare) {
			h[k] = []string{v}
			return
		}
		spare = append(spare, v)
		n := len(spare)
		h[k] = spare[n-1 : n : n]
	}
	delete(h, "X-Forwarded-For")
	if clientIP, _, err := net.SplitHostPort(in.RemoteAddr); err == nil {
		if len(prior) > 0 {
			clientIP = strings.Join(prior, ", ") + ", " + clientIP
		}
		set("X-Forwarded-For", clientIP)
	}
	set("X-Forwarded-Host", in.Host)
	if in.TLS == nil {
		h["X-Forwarded-Proto"] = protoHTTP
	} else {
		h["X-Forwarded-Proto"] = protoHTTPS
	}
	for k := range h {
		if reservedHeader(k) {
			delete(h, k)
		}
	}
	delete(h, "Authorization")
	// Client-address headers other proxies use are not the sidecar's
	// word: an upstream trusting them would take the client's.
	for _, k := range clientAddressHeaders {
		delete(h, k)
	}
	if v := clientCertSubject(in.TLS); v != "" {
		h[HeaderClientCertSubject] = []string{v}
	}
	if st == nil {
		return
	}
	if st.addr.IsValid() {
		set("X-Real-Ip", st.addrText)
	}
	if st.rt != nil && st.rt.Policy.APIKeyHeader != "" {
		h.Del(st.rt.Policy.APIKeyHeader)
	}
	setDecision(h, st)
	set("X-Request-Id", st.id)
	if id := st.identity; id != nil {
		set(HeaderKeyID, id.KeyID)
		set(HeaderPermissions, id.PermHeader)
		if id.Client != "" {
			set(HeaderClient, id.Client)
		}
	}
}

// Shared, never modified: header values the proxy sets.
var (
	protoHTTP  = []string{"http"}
	protoHTTPS = []string{"https"}
)

// proxyError answers a failed proxied request. Only failures of the upstream
// are 502 and counted as upstream errors: a body the client could not
// deliver (malformed chunked framing, a size limit, cut short) is 400 or 413,
// a client that went away is counted as client_closed.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := state(r)
	if st != nil && st.body != nil {
		if berr := st.body.readErr(); berr != nil {
			s.writeBodyFailure(w, r, st, berr)
			return
		}
	}
	if r.Context().Err() != nil {
		if st != nil {
			st.result, st.reason = "client_closed", "canceled"
		}
		w.Header().Set("Connection", "close")
		writeError(w, r, http.StatusBadRequest, errorBody{Error: "bad_request", Message: "client closed the request"})
		return
	}
	if st != nil {
		st.result, st.reason = "error", "upstream"
	}
	s.log.Warn("Upstream request failed", "error", err)
	writeError(w, r, http.StatusBadGateway, errorBody{Error: "bad_gateway", Message: "upstream unavailable"})
}

// reservedHeader reports whether an inbound header name is X-Keygate-* in
// any case, also with underscores for hyphens: CGI-style upstreams (WSGI,
// PHP, Rack) read X_Keygate_Key_Id as the same HTTP_X_KEYGATE_KEY_ID.
// clientAddressHeaders are removed from proxied requests; X-Real-Ip is then
// set to the client address the sidecar resolved (trusted proxies honoured).
var clientAddressHeaders = []string{"X-Real-Ip", "True-Client-Ip", "Cf-Connecting-Ip", "X-Client-Ip", "X-Cluster-Client-Ip", "Fastly-Client-Ip"}

func reservedHeader(k string) bool {
	if len(k) < len(headerPrefix) {
		return false
	}
	for i := 0; i < len(headerPrefix); i++ {
		c, p := k[i], headerPrefix[i]
		if c == '_' {
			c = '-'
		}
		if c|0x20 != p|0x20 {
			return false
		}
	}
	return true
}

func peerTrusted(rt *config.Runtime, remote string) (bool, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false, false
	}
	a := ap.Addr().Unmap()
	for _, p := range rt.Resolver.Trusted {
		if p.Contains(a) {
			return true, true
		}
	}
	return false, true
}
