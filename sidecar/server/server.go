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
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
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
	// fast holds the fast path's upstream connections (fastproxy.go).
	fast *upstreamPool
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
	s.fast = newUpstreamPool(o.Upstream)
	s.proxy = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fw, ok := w.(*fastWriter); ok {
			s.forwardFast(fw, r)
			return
		}
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
	// id is the request ID, written into idBuf: it is valid until the
	// state is reset for the connection's next request.
	id    string
	idBuf [32]byte
	start time.Time
	now   time.Time
	rt    *config.Runtime
	addr  netip.Addr
	// addrText is addr.String(), made once; memo is the previous
	// request's on the same state (the fast path's connections).
	addrText string
	memo     addrMemo
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
	// vals backs the single-value header fields forwardHeaders sets.
	vals [8]string
}

type addrMemo struct {
	addr netip.Addr
	text string
}

type ctxKey struct{}

func state(r *http.Request) *request {
	st, _ := r.Context().Value(ctxKey{}).(*request)
	return st
}

func (s *Server) withRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The fast path lends each connection one request state, already
		// in the request's context; net/http requests get a new one.
		st := state(r)
		if st == nil {
			st = &request{}
			r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, st))
		}
		// A connection's client address rarely changes: its text is
		// kept from the previous request on the same state.
		memo := addrMemo{st.addr, st.addrText}
		*st = request{start: time.Now(), result: "allow", memo: memo}
		st.now = s.now()
		st.id = aliasBytes(strconv.AppendUint(append(st.idBuf[:0], s.reqPfx...), s.reqSeq.Add(1), 36))
		next.ServeHTTP(w, r)
		if st.identity != nil {
			s.opts.Usage.Seen(st.identity.KeyID, st.now)
		}
		d := time.Since(st.start)
		s.opts.Metrics.decision(st.result, st.reason, d)
		if st.result != "allow" || s.log.Enabled(r.Context(), slog.LevelDebug) {
			attrs := []any{"requestID", st.id, "method", r.Method, "path", r.URL.Path, "client", st.addrText,
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
		st.addr, st.addrText = addr, st.memo.text
		if addr != st.memo.addr || st.memo.text == "" {
			st.addrText = addr.String()
		}
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
