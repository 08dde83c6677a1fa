// Package tokenendpoint is the sidecar's token endpoint: token issuance
// (api_key, password, client_credentials and client tokens), revocation
// (action revoke and RFC 7009), introspection (RFC 7662), the JWKS and the
// authentication test. The server mounts it in its chain after the bundle
// and client-address steps and before authentication.
package tokenendpoint

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

// Reserved paths served by the endpoint besides the policy's token paths.
const (
	PathRevoke     = "/oauth/revoke"
	PathIntrospect = "/oauth/introspect"
	PathJWKS       = "/.well-known/jwks.json"
	PathAuthTest   = "/api/auth/test"
)

// Call is one request as the chain resolved it before the endpoint; the
// endpoint records its outcome in it (access log and metrics).
type Call interface {
	Runtime() *config.Runtime
	Now() time.Time
	ClientAddr() netip.Addr
	// Result is the outcome so far ("allow" until something refuses).
	Result() string
	SetResult(result, reason string)
	SetReason(reason string)
	SetIdentity(id *authn.Identity)
}

// Gate is what the endpoint shares with the chain it is mounted in: the
// same authentication, failure limits, token rate limit and metrics.
type Gate interface {
	// Authenticate authenticates r's credentials (failure limits and CIDR
	// lists applied). On failure it has answered, invalid_client when oauth
	// is true, else the generic 401, and returns nil.
	Authenticate(w http.ResponseWriter, r *http.Request, oauth bool) *authn.Identity
	// Blocked reports whether the failure limits of r's client address or of
	// keyID are tripped; if so it has answered 429.
	Blocked(w http.ResponseWriter, r *http.Request, keyID string) bool
	// Failed counts a failed authentication of keyID from r's client address.
	Failed(r *http.Request, keyID string)
	// AllowToken spends one token request of id's key; false: it has
	// answered 429 in the token endpoint's shape.
	AllowToken(w http.ResponseWriter, r *http.Request, id *authn.Identity) bool
	// TokenIssued and TokenRevoked count tokens.
	TokenIssued(kind string)
	TokenRevoked()
}

// Options configure an Endpoint.
type Options struct {
	Gate    Gate
	Revoked *revocation.Set
	// Revocations persists revocations before they are acknowledged.
	Revocations revocation.Store
	Log         *slog.Logger
}

// Endpoint answers the token endpoint's paths.
type Endpoint struct {
	gate        Gate
	revoked     *revocation.Set
	revocations revocation.Store
	log         *slog.Logger
}

// New builds an Endpoint.
func New(o Options) *Endpoint {
	return &Endpoint{gate: o.Gate, revoked: o.Revoked, revocations: o.Revocations, log: o.Log}
}

// Serve answers r when its path is one of the endpoint's and reports whether
// it did.
func (e *Endpoint) Serve(w http.ResponseWriter, r *http.Request, c Call) bool {
	p := r.URL.Path
	switch {
	case c.Runtime().TokenPaths[p]:
		e.serveToken(w, r, c)
	case p == PathRevoke:
		e.serveRevoke(w, r, c)
	case p == PathIntrospect:
		e.serveIntrospect(w, r, c)
	case p == PathJWKS:
		e.serveJWKS(w, r, c)
	case p == PathAuthTest:
		e.serveAuthTest(w, r)
	default:
		return false
	}
	return true
}

func (e *Endpoint) oauthFail(w http.ResponseWriter, c Call, oe *oauthError) {
	if c.Result() == "allow" {
		c.SetResult("token_error", oe.Code)
	}
	if oe.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", c.Runtime().Challenge)
	}
	writeJSON(w, oe.status, oe)
}

// invalidClientErr is the one answer to every failed client authentication.
var invalidClientErr = &oauthError{Code: "invalid_client", Description: "client authentication failed", status: http.StatusUnauthorized}

// WriteInvalidClient answers a failed client authentication (RFC 6749 §5.2)
// with the policy's challenge.
func WriteInvalidClient(w http.ResponseWriter, challenge string) {
	w.Header().Set("WWW-Authenticate", challenge)
	writeJSON(w, invalidClientErr.status, invalidClientErr)
}

func (e *Endpoint) invalidClient(w http.ResponseWriter, c Call) {
	e.oauthFail(w, c, invalidClientErr)
}

// bodyFailure classifies a body read error: a size limit hit is 413, any
// other failure (malformed chunked framing, a body cut short) 400.
func bodyFailure(err error) (int, string) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) || errors.Is(err, http.ErrLineTooLong) {
		return http.StatusRequestEntityTooLarge, "body_too_large"
	}
	return http.StatusBadRequest, "malformed_body"
}

type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
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
