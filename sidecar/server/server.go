// Package server is the sidecar's HTTP surface: a fixed middleware chain
// (request state and access log → bundle → client address → authentication →
// CIDR → permissions → reverse proxy), the token endpoint (package
// tokenendpoint) mounted before the authentication steps, and the admin
// listener.
package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/authz"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/quota"
	"github.com/keygate-dev/keygate/sidecar/ratelimit"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/tokenendpoint"
	"github.com/keygate-dev/keygate/sidecar/usage"
)

// Identity headers added to forwarded requests (and removed when they come
// from outside).
const (
	HeaderKeyID       = "X-Keygate-Key-Id"
	HeaderClient      = "X-Keygate-Client"
	HeaderPermissions = "X-Keygate-Permissions"
	headerPrefix      = "X-Keygate-"
)

// Reserved paths served by the sidecar itself (the token endpoint's).
const (
	PathRevoke     = tokenendpoint.PathRevoke
	PathIntrospect = tokenendpoint.PathIntrospect
	PathJWKS       = tokenendpoint.PathJWKS
	PathAuthTest   = tokenendpoint.PathAuthTest
)

// Options configure a Server.
type Options struct {
	Store   *config.Store
	Revoked *revocation.Set
	// Revocations persists revocations before they are acknowledged.
	Revocations revocation.Store
	// Upstream is the main container, e.g. http://127.0.0.1:8080.
	Upstream *url.URL
	Log      *slog.Logger
	Metrics  *Metrics
	// FailureLimit failed authentications per FailureWindow per key ID and
	// per client address trip a 429 (defaults 20 per minute).
	FailureLimit  int
	FailureWindow time.Duration
	// Usage records the keys that authenticate (nil: not recorded).
	Usage *usage.Recorder
	// RateLimitSubjects caps the rate-limit buckets kept (default 100000).
	RateLimitSubjects int
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// UpstreamH2C proxies to the workload over HTTP/2 cleartext with prior
	// knowledge (gRPC servers) instead of HTTP/1.1.
	UpstreamH2C bool
	// TLSStatus, when set, reports why the TLS key pair on disk was refused
	// (the previous pair serving); /readyz shows it without failing.
	TLSStatus func() error
	// ClientCAStatus, when set, reports why the client CA file on disk was
	// refused (the previous CAs in force); /readyz shows it without failing.
	ClientCAStatus func() error
}

// Server handles the sidecar's main listener.
type Server struct {
	opts     Options
	auth     *authn.Authenticator
	proxy    http.Handler
	tokens   *tokenendpoint.Endpoint
	byKey    *ratelimit.Limiter
	byAddr   *ratelimit.Limiter
	quotas   *quota.Buckets
	now      func() time.Time
	log      *slog.Logger
	draining atomic.Bool
	reqSeq   atomic.Uint64
	reqPfx   string
	handler  http.Handler
}

// New builds a Server.
func New(o Options) *Server {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.FailureLimit == 0 {
		o.FailureLimit = 20
	}
	if o.FailureWindow == 0 {
		o.FailureWindow = time.Minute
	}
	if o.RateLimitSubjects == 0 {
		o.RateLimitSubjects = 100000
	}
	if o.Revoked == nil {
		o.Revoked = revocation.NewSet()
	}
	if o.Revocations == nil {
		o.Revocations = revocation.Memory{Set: o.Revoked}
	}
	s := &Server{
		opts:   o,
		auth:   &authn.Authenticator{Revoked: o.Revoked},
		byKey:  ratelimit.New(o.FailureLimit, o.FailureWindow, 10000),
		byAddr: ratelimit.New(o.FailureLimit, o.FailureWindow, 10000),
		quotas: quota.New(o.RateLimitSubjects),
		now:    o.Now,
		log:    o.Log,
		reqPfx: strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "-",
	}
	s.tokens = tokenendpoint.New(tokenendpoint.Options{Gate: gate{s}, Revoked: o.Revoked, Revocations: o.Revocations, Log: o.Log})
	rp := newProxy(o.Upstream, s)
	if o.UpstreamH2C {
		t := NewTransport()
		t.Protocols = &http.Protocols{}
		t.Protocols.SetUnencryptedHTTP2(true)
		rp.Transport = t
	}
	s.proxy = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if up := r.Header.Values("Upgrade"); len(up) > 0 {
			if len(up) == 1 && strings.EqualFold(strings.TrimSpace(up[0]), "websocket") {
				// A WebSocket outlives the listener's read/write timeouts.
				rc := http.NewResponseController(w)
				_ = rc.SetReadDeadline(time.Time{})
				_ = rc.SetWriteDeadline(time.Time{})
			} else {
				// Any other protocol (h2c above all) would turn the connection
				// into a tunnel whose later requests never pass the sidecar:
				// ignore the offer (RFC 9110 §7.8 allows it) and proxy HTTP/1.1.
				r.Header.Del("Upgrade")
			}
		}
		if st := state(r); st != nil {
			st.body = guardBody(r)
		}
		rp.ServeHTTP(w, r)
	})
	s.handler = withFraming(s.withRequest(s.withBundle(s.withClientAddr(s.route(s.withAuthn(s.withRateLimit(s.withAuthz(s.proxy))))))))
	return s
}

// Handler is the main listener's handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Drain marks the server as draining: /readyz fails from now on.
func (s *Server) Drain() { s.draining.Store(true) }

// Draining reports whether Drain was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// request is the request-scoped state, kept in the context.
type request struct {
	id       string
	start    time.Time
	now      time.Time
	rt       *config.Runtime
	addr     netip.Addr
	identity *authn.Identity
	result   string
	reason   string
	// auditable is set on the request path to the workload: under Audit a
	// refusal there is forwarded instead (audit.go).
	auditable bool
	// decision is the X-Keygate-Decision value of a denial forwarded in Audit.
	decision string
	// body guards a proxied request's body (nil without one).
	body *bodyGuard
}

type ctxKey struct{}

func state(r *http.Request) *request {
	st, _ := r.Context().Value(ctxKey{}).(*request)
	return st
}

func (s *Server) withRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := &request{start: time.Now(), result: "allow"}
		st.now = s.now()
		st.id = s.reqPfx + strconv.FormatUint(s.reqSeq.Add(1), 36)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, st)))
		if st.identity != nil {
			s.opts.Usage.Seen(st.identity.KeyID, st.now)
		}
		d := time.Since(st.start)
		s.opts.Metrics.decision(st.result, st.reason, d)
		if st.result != "allow" || s.log.Enabled(r.Context(), slog.LevelDebug) {
			attrs := []any{"requestID", st.id, "method", r.Method, "path", r.URL.Path, "client", st.addr.String(),
				"result", st.result, "reason", st.reason, "duration", d}
			if st.identity != nil {
				attrs = append(attrs, "keyID", st.identity.KeyID, "clientKey", st.identity.Client)
			}
			lvl := slog.LevelDebug
			if st.result != "allow" {
				lvl = slog.LevelInfo
			}
			s.log.Log(r.Context(), lvl, "Handled request", attrs...)
		}
	})
}

func (s *Server) withBundle(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := state(r)
		st.rt = s.opts.Store.Load()
		if st.rt == nil {
			st.result, st.reason = "unavailable", "no_bundle"
			w.Header().Set("Retry-After", "1")
			writeError(w, r, http.StatusServiceUnavailable, errorBody{Error: "unavailable", Message: "no policy bundle loaded yet"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) withClientAddr(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := state(r)
		addr, ok := st.rt.Resolver.Resolve(r)
		if !ok {
			st.result, st.reason = "deny", "bad_client_address"
			writeError(w, r, http.StatusBadRequest, errorBody{Error: "bad_request", Message: "client address cannot be determined"})
			return
		}
		st.addr = addr
		if !cleanPath(r.URL.Path) || encodedSlash(r.URL.RawPath) {
			st.result, st.reason = "deny", "unclean_path"
			writeError(w, r, http.StatusBadRequest, errorBody{Error: "bad_request", Message: "path is not in canonical form"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// cleanPath refuses paths whose meaning an upstream could read differently
// from the rules: dot segments, empty segments, missing leading slash.
func cleanPath(p string) bool {
	if p == "" || p[0] != '/' {
		return p == "*"
	}
	for i := 1; i < len(p); i++ {
		if p[i] == '/' && p[i-1] == '/' {
			return false
		}
	}
	for i, start := 1, 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			if seg := p[start:i]; seg == "." || seg == ".." {
				return false
			}
			start = i + 1
		}
	}
	return !strings.ContainsAny(p, "\\\x00")
}

// encodedSlash reports a percent-encoded "/" in the escaped path: the rules
// see the decoded path, the upstream may route on the raw one (a public
// "/healthz%2F..x" could mean something else behind it), so such paths are refused.
func encodedSlash(rawPath string) bool {
	return strings.Contains(rawPath, "%2F") || strings.Contains(rawPath, "%2f")
}

// route sends reserved paths to the sidecar's own endpoints and public paths
// straight to the proxy; everything else continues the chain.
func (s *Server) route(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := state(r)
		switch {
		case s.tokens.Serve(w, r, st):
		case st.rt.PublicPaths[r.URL.Path]:
			st.reason = "public"
			s.proxy.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// authenticate runs authentication, failure limits and the CIDR check.
// On failure it has written the response and returns nil.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, st *request, oauth bool) *authn.Identity {
	addrKey := st.addr.String()
	if blocked, after := s.byAddr.Blocked(addrKey, st.now); blocked {
		if s.auditDeny(w, r, st, auditRateLimited) {
			return nil
		}
		s.tooMany(w, r, st, after)
		return nil
	}
	id, ferr := s.auth.Request(st.rt, r, st.now)
	if ferr == nil {
		ferr = authn.CheckAddress(st.rt, id, st.addr)
	}
	keyID := ""
	if ferr != nil {
		keyID = ferr.KeyID
	} else {
		keyID = id.KeyID
	}
	if blocked, after := s.byKey.Blocked(keyID, st.now); blocked {
		if s.auditDeny(w, r, st, auditRateLimited) {
			return nil
		}
		s.tooMany(w, r, st, after)
		return nil
	}
	if ferr != nil {
		if ferr.Reason != authn.ReasonNoCredentials {
			s.byAddr.Fail(addrKey, st.now)
			s.byKey.Fail(ferr.KeyID, st.now)
		}
		st.result, st.reason = "unauthenticated", ferr.Reason
		if s.auditDeny(w, r, st, authnAuditReason(ferr.Reason)) {
			return nil
		}
		if oauth {
			tokenendpoint.WriteInvalidClient(w, st.rt.Challenge)
		} else {
			s.unauthorized(w, r, st)
		}
		return nil
	}
	st.identity = id
	return id
}

func (s *Server) withAuthn(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := state(r)
		st.auditable = st.rt.Audit
		if s.authenticate(w, r, st, false) == nil {
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) withAuthz(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := state(r)
		d, perm := st.rt.Rules.Authorize(r.Method, r.URL.Path, st.identity.Perms)
		if d == authz.Allow {
			// The upstream may route the request by an overriding method:
			// every method it could act on must be allowed.
			for _, m := range overrideMethods(r) {
				if d, perm = st.rt.Rules.Authorize(m, r.URL.Path, st.identity.Perms); d != authz.Allow {
					break
				}
			}
		}
		if d != authz.Allow && s.auditDeny(w, r, st, authzAuditReason(d, perm)) {
			return
		}
		switch d {
		case authz.MissingPermission:
			st.result, st.reason = "forbidden", "missing_permission"
			if isGRPC(r) {
				writeGRPCStatus(w, grpcPermissionDenied, "missing permission "+perm)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope", scope="`+perm+`"`)
			writeJSON(w, http.StatusForbidden, errorBody{Error: "forbidden", Message: "missing permission " + perm, Permission: perm})
			return
		case authz.NoRule:
			st.result, st.reason = "forbidden", "no_rule"
			if isGRPC(r) {
				writeGRPCStatus(w, grpcPermissionDenied, "no rule allows this request")
				return
			}
			writeJSON(w, http.StatusForbidden, errorBody{Error: "forbidden", Message: "no rule allows this request"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// methodOverrideHeaders are the headers frameworks (Rails' Rack::MethodOverride,
// Laravel, Symfony, Express's method-override) honour to route a request by
// another method than its own, lower case with hyphens.
var methodOverrideHeaders = map[string]bool{"x-http-method-override": true, "x-http-method": true, "x-method-override": true}

// overrideMethods returns the methods a request asks the upstream to use
// instead of its own: method-override headers (under any spelling a CGI-style
// upstream reads as the same name) and the _method query parameter.
func overrideMethods(r *http.Request) []string {
	var out []string
	add := func(v string) {
		for _, m := range strings.Split(v, ",") {
			if m = strings.TrimSpace(m); m != "" {
				out = append(out, strings.ToUpper(m))
			}
		}
	}
	for k, vs := range r.Header {
		if len(k) < len("X-Http-Method") || (k[0] != 'X' && k[0] != 'x') {
			continue
		}
		if methodOverrideHeaders[strings.ToLower(strings.ReplaceAll(k, "_", "-"))] {
			for _, v := range vs {
				add(v)
			}
		}
	}
	if strings.Contains(r.URL.RawQuery, "_method") {
		for _, v := range r.URL.Query()["_method"] {
			add(v)
		}
	}
	return out
}

type errorBody struct {
	Error      string `json:"error"`
	Message    string `json:"message"`
	Permission string `json:"permission,omitempty"`
}

// unauthorizedBody is the one body of every 401 on resources.
var unauthorizedBody = []byte(`{"error":"unauthorized","message":"authentication required"}` + "\n")

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request, st *request) {
	if isGRPC(r) {
		writeGRPCStatus(w, grpcUnauthenticated, "authentication required")
		return
	}
	h := w.Header()
	h.Set("WWW-Authenticate", st.rt.Challenge)
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write(unauthorizedBody)
}

func (s *Server) tooMany(w http.ResponseWriter, r *http.Request, st *request, after time.Duration) {
	st.result, st.reason = "throttled", "failure_limit"
	secs := int(after/time.Second) + 1
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeError(w, r, http.StatusTooManyRequests, errorBody{Error: "too_many_requests", Message: "too many failed authentication attempts"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"internal"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if h.Get("Cache-Control") == "" {
		h.Set("Cache-Control", "no-store")
	}
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

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
			st := state(pr.In)
			if st != nil && st.rt != nil && len(st.rt.Resolver.Trusted) > 0 {
				if peer, ok := peerTrusted(st.rt, pr.In.RemoteAddr); ok && peer {
					pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
				}
			}
			pr.SetURL(upstream)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			h := pr.Out.Header
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
			if st != nil && st.addr.IsValid() {
				h["X-Real-Ip"] = []string{st.addr.String()}
			}
			if st != nil && st.rt != nil && st.rt.Policy.APIKeyHeader != "" {
				h.Del(st.rt.Policy.APIKeyHeader)
			}
			if st != nil {
				setDecision(h, st)
				h["X-Request-Id"] = []string{st.id}
				if id := st.identity; id != nil {
					h[HeaderKeyID] = []string{id.KeyID}
					h[HeaderPermissions] = []string{id.PermHeader}
					if id.Client != "" {
						h[HeaderClient] = []string{id.Client}
					}
				}
			}
			if v := clientCertSubject(pr.In.TLS); v != "" {
				h[HeaderClientCertSubject] = []string{v}
			}
		},
		Transport:    NewTransport(),
		BufferPool:   &BufferPool{},
		ErrorHandler: s.proxyError,
	}
}

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
