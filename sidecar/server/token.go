package server

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/clientaddr"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/token"
)

// MaxBodySize bounds token-endpoint request bodies.
const MaxBodySize = 16 << 10

// oauthError is an RFC 6749 §5.2 error.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
	status      int
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

func invalidRequest(desc string) *oauthError {
	return &oauthError{Code: "invalid_request", Description: desc, status: http.StatusBadRequest}
}

// TokenRequest is a token-endpoint body, JSON or form-encoded.
type TokenRequest struct {
	GrantType    string
	APIKey       string
	Secret       string
	Username     string
	Password     string
	ClientID     string
	ClientSecret string
	ClientKey    string
	Action       string
	AccessToken  string
	Token        string
	Scope        string
	AllowedCIDRs []string
}

type jsonTokenRequest struct {
	GrantType    string          `json:"grant_type"`
	APIKey       string          `json:"apiKey"`
	Secret       string          `json:"secret"`
	Username     string          `json:"username"`
	Password     string          `json:"password"`
	ClientID     string          `json:"client_id"`
	ClientSecret string          `json:"client_secret"`
	ClientKey    string          `json:"clientKey"`
	Action       string          `json:"action"`
	AccessToken  string          `json:"access_token"`
	Token        string          `json:"token"`
	Scope        string          `json:"scope"`
	AllowedCIDRs json.RawMessage `json:"allowedCIDRs"`
}

// ParseTokenRequest decodes a body of the given Content-Type. Only JSON and
// form encoding are accepted; form parameters may not repeat (RFC 6749 §3.2).
func ParseTokenRequest(contentType string, body []byte) (*TokenRequest, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, invalidRequest("Content-Type must be application/json or application/x-www-form-urlencoded")
	}
	switch mt {
	case "application/json":
		var j jsonTokenRequest
		dec := json.NewDecoder(strings.NewReader(string(body)))
		if err := dec.Decode(&j); err != nil {
			return nil, invalidRequest("body is not a JSON object")
		}
		if dec.More() {
			return nil, invalidRequest("body holds more than one JSON value")
		}
		t := &TokenRequest{GrantType: j.GrantType, APIKey: j.APIKey, Secret: j.Secret, Username: j.Username,
			Password: j.Password, ClientID: j.ClientID, ClientSecret: j.ClientSecret, ClientKey: j.ClientKey,
			Action: j.Action, AccessToken: j.AccessToken, Token: j.Token, Scope: j.Scope}
		if len(j.AllowedCIDRs) > 0 && string(j.AllowedCIDRs) != "null" {
			var list []string
			var one string
			if err := json.Unmarshal(j.AllowedCIDRs, &list); err != nil {
				if err := json.Unmarshal(j.AllowedCIDRs, &one); err != nil {
					return nil, invalidRequest("allowedCIDRs must be a list of CIDR blocks")
				}
				list = splitList(one)
			}
			t.AllowedCIDRs = list
		}
		return t, nil
	case "application/x-www-form-urlencoded":
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, invalidRequest("body is not form-encoded")
		}
		for k, vals := range v {
			if len(vals) > 1 {
				return nil, invalidRequest("parameter " + k + " is repeated")
			}
		}
		return &TokenRequest{GrantType: v.Get("grant_type"), APIKey: v.Get("apiKey"), Secret: v.Get("secret"),
			Username: v.Get("username"), Password: v.Get("password"), ClientID: v.Get("client_id"),
			ClientSecret: v.Get("client_secret"), ClientKey: v.Get("clientKey"), Action: v.Get("action"),
			AccessToken: v.Get("access_token"), Token: v.Get("token"), Scope: v.Get("scope"),
			AllowedCIDRs: splitList(v.Get("allowedCIDRs"))}, nil
	}
	return nil, invalidRequest("Content-Type must be application/json or application/x-www-form-urlencoded")
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// tokenResponse is every token endpoint's success body.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
	Username    string `json:"username,omitempty"`
	AuthHeader  string `json:"auth_header"`
}

func (s *Server) oauthFail(w http.ResponseWriter, st *request, e *oauthError) {
	if st.result == "allow" {
		st.result, st.reason = "token_error", e.Code
	}
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", st.rt.Challenge)
	}
	writeJSON(w, e.status, e)
}

// invalidClientErr is the one answer to every failed client authentication.
var invalidClientErr = &oauthError{Code: "invalid_client", Description: "client authentication failed", status: http.StatusUnauthorized}

func (s *Server) invalidClient(w http.ResponseWriter, st *request) {
	s.oauthFail(w, st, invalidClientErr)
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request, st *request) (*TokenRequest, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.oauthFail(w, st, &oauthError{Code: "invalid_request", Description: "use POST", status: http.StatusMethodNotAllowed})
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		// The client's fault, and its framing can no longer be trusted.
		code, reason, _ := bodyFailure(err)
		st.result, st.reason = "bad_request", reason
		w.Header().Set("Connection", "close")
		if code == http.StatusRequestEntityTooLarge {
			s.oauthFail(w, st, &oauthError{Code: "invalid_request", Description: "body too large", status: code})
		} else {
			s.oauthFail(w, st, invalidRequest("body unreadable"))
		}
		return nil, false
	}
	tr, err := ParseTokenRequest(r.Header.Get("Content-Type"), body)
	if err != nil {
		var oe *oauthError
		errors.As(err, &oe)
		s.oauthFail(w, st, oe)
		return nil, false
	}
	return tr, true
}

// authSecret authenticates a key ID and secret from a body and applies the
// failure limits and CIDR lists. ok false: response written.
func (s *Server) authSecret(w http.ResponseWriter, st *request, keyID, secret string, onFail *oauthError) (*authn.Identity, bool) {
	addrKey := st.addr.String()
	if blocked, after := s.byAddr.Blocked(addrKey, st.now); blocked {
		s.tooMany(w, st, after)
		return nil, false
	}
	if blocked, after := s.byKey.Blocked(keyID, st.now); blocked {
		s.tooMany(w, st, after)
		return nil, false
	}
	k, ferr := authn.CheckSecret(st.rt, keyID, secret, st.now)
	var id *authn.Identity
	if ferr == nil {
		id, ferr = authn.KeyIdentity(k, "", authn.ViaBasic)
	}
	if ferr == nil {
		ferr = authn.CheckAddress(st.rt, id, st.addr)
	}
	if ferr != nil {
		s.byAddr.Fail(addrKey, st.now)
		s.byKey.Fail(keyID, st.now)
		st.result, st.reason = "unauthenticated", ferr.Reason
		s.oauthFail(w, st, onFail)
		return nil, false
	}
	st.identity = id
	return id, true
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, st *request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	tr, ok := s.readBody(w, r, st)
	if !ok {
		return
	}
	rt := st.rt
	switch {
	case tr.GrantType == "password":
		if !rt.Grants[config.GrantPassword] {
			s.oauthFail(w, st, &oauthError{Code: "unsupported_grant_type", Description: "grant password is not enabled", status: http.StatusBadRequest})
			return
		}
		if tr.Username == "" || tr.Password == "" {
			s.oauthFail(w, st, invalidRequest("username and password are required"))
			return
		}
		id, ok := s.authSecret(w, st, tr.Username, tr.Password,
			&oauthError{Code: "invalid_grant", Description: "the credentials are invalid", status: http.StatusBadRequest})
		if !ok {
			return
		}
		s.issue(w, st, id, tr, http.StatusOK, "bearer", tr.Username)
	case tr.GrantType == "client_credentials":
		if !rt.Grants[config.GrantClientCredentials] {
			s.oauthFail(w, st, &oauthError{Code: "unsupported_grant_type", Description: "grant client_credentials is not enabled", status: http.StatusBadRequest})
			return
		}
		keyID, secret := tr.ClientID, tr.ClientSecret
		if auth := r.Header["Authorization"]; len(auth) > 0 {
			if len(auth) > 1 || keyID != "" || secret != "" {
				s.oauthFail(w, st, invalidRequest("use one client authentication method"))
				return
			}
			cred, err := authn.ParseAuthorization(auth[0], nil)
			if err != nil || !cred.Basic {
				st.result, st.reason = "unauthenticated", authn.ReasonMalformed
				s.invalidClient(w, st)
				return
			}
			keyID, secret = cred.User, cred.Password
		}
		if keyID == "" || secret == "" {
			st.result, st.reason = "unauthenticated", authn.ReasonNoCredentials
			s.invalidClient(w, st)
			return
		}
		id, ok := s.authSecret(w, st, keyID, secret, invalidClientErr)
		if !ok {
			return
		}
		s.issue(w, st, id, tr, http.StatusOK, "Bearer", "")
	case tr.GrantType != "":
		s.oauthFail(w, st, &oauthError{Code: "unsupported_grant_type", Description: "grant_type " + tr.GrantType + " is not supported", status: http.StatusBadRequest})
	case tr.Action == "revoke":
		s.revokeAction(w, r, st, tr)
	case tr.Action != "":
		s.oauthFail(w, st, invalidRequest("unknown action"))
	case tr.APIKey != "" || tr.Username != "":
		if !rt.Grants[config.GrantAPIKey] {
			s.oauthFail(w, st, &oauthError{Code: "unsupported_grant_type", Description: "grant api_key is not enabled", status: http.StatusBadRequest})
			return
		}
		keyID := tr.APIKey
		if keyID == "" {
			keyID = tr.Username
		} else if tr.Username != "" {
			s.oauthFail(w, st, invalidRequest("give apiKey or username, not both"))
			return
		}
		if tr.Secret == "" {
			s.oauthFail(w, st, invalidRequest("secret is required"))
			return
		}
		id, ok := s.authSecret(w, st, keyID, tr.Secret, invalidClientErr)
		if !ok {
			return
		}
		s.issue(w, st, id, tr, http.StatusCreated, "Bearer", "")
	case tr.ClientKey != "":
		if !rt.Grants[config.GrantClientToken] {
			s.oauthFail(w, st, &oauthError{Code: "unsupported_grant_type", Description: "grant client_token is not enabled", status: http.StatusBadRequest})
			return
		}
		id := s.authenticate(w, r, st, true)
		if id == nil {
			return
		}
		if id.Client != "" {
			s.oauthFail(w, st, &oauthError{Code: "unauthorized_client", Description: "a client token cannot issue client tokens", status: http.StatusForbidden})
			return
		}
		if id.Key.Clients[tr.ClientKey] == nil {
			s.oauthFail(w, st, &oauthError{Code: "invalid_grant", Description: "clientKey is not a client of this key", status: http.StatusBadRequest})
			return
		}
		s.issueClient(w, st, id, tr)
	default:
		s.oauthFail(w, st, invalidRequest("no grant_type, credentials, clientKey or action"))
	}
}

// narrow computes a token's permissions and CIDRs: the holder's, narrowed by
// the request's scope and allowedCIDRs, never widened.
func narrow(holderPerms []string, covers func(string) bool, keyCIDRs []string, tr *TokenRequest, rt *config.Runtime) (perms, cidrs []string, scope string, e *oauthError) {
	perms = holderPerms
	if tr.Scope != "" {
		want := strings.Fields(tr.Scope)
		for _, p := range want {
			if !covers(p) {
				return nil, nil, "", &oauthError{Code: "invalid_scope", Description: "scope " + p + " exceeds the key's permissions", status: http.StatusBadRequest}
			}
		}
		perms, scope = want, strings.Join(want, " ")
	}
	if len(tr.AllowedCIDRs) > 0 {
		req, err := clientaddr.ParsePrefixes(tr.AllowedCIDRs)
		if err != nil {
			return nil, nil, "", invalidRequest("allowedCIDRs holds a value that is not a CIDR block")
		}
		wide, _ := clientaddr.ParsePrefixes(keyCIDRs)
		if !clientaddr.Within(req, wide) || !clientaddr.Within(req, rt.PolicyCIDRs) {
			return nil, nil, "", invalidRequest("allowedCIDRs may only narrow the key's blocks")
		}
		for _, p := range req {
			cidrs = append(cidrs, p.String())
		}
	}
	return perms, cidrs, scope, nil
}

func cidrStrings(id *authn.Identity) []string {
	out := make([]string, 0, len(id.KeyCIDRs))
	for _, p := range id.KeyCIDRs {
		out = append(out, p.String())
	}
	return out
}

func (s *Server) issue(w http.ResponseWriter, st *request, id *authn.Identity, tr *TokenRequest, status int, tokenType, username string) {
	if !s.allowToken(w, st, id) {
		return
	}
	perms, cidrs, scope, e := narrow(id.Key.PermList, id.Perms.Covers, cidrStrings(id), tr, st.rt)
	if e != nil {
		s.oauthFail(w, st, e)
		return
	}
	raw, c, err := st.rt.Keyset.Issue(token.Spec{Subject: id.KeyID, Perms: perms, CIDRs: cidrs, TTL: st.rt.TokenTTL}, st.now)
	if err != nil {
		s.log.Error("Failed to sign a token", "error", err)
		s.oauthFail(w, st, &oauthError{Code: "server_error", status: http.StatusInternalServerError})
		return
	}
	s.opts.Metrics.tokenIssued("platform")
	st.reason = "token_issued"
	writeJSON(w, status, tokenResponse{AccessToken: raw, TokenType: tokenType, ExpiresIn: int64(c.Expiry.Time().Sub(st.now.Truncate(time.Second)) / time.Second),
		Scope: scope, Username: username, AuthHeader: st.rt.Scheme + " " + raw})
}

func (s *Server) issueClient(w http.ResponseWriter, st *request, id *authn.Identity, tr *TokenRequest) {
	if !s.allowToken(w, st, id) {
		return
	}
	cl := id.Key.Clients[tr.ClientKey]
	// The caller may itself be narrowed (a scoped platform token): the client
	// gets what both the client and the caller hold.
	base := make([]string, 0, len(cl.PermList))
	for _, p := range cl.PermList {
		if id.Perms.Covers(p) {
			base = append(base, p)
		}
	}
	covers := func(p string) bool { return cl.Perms.Covers(p) && id.Perms.Covers(p) }
	keyCIDRs := cidrStrings(id)
	if id.TokenCIDRs != nil {
		keyCIDRs = nil
		for _, p := range id.TokenCIDRs {
			keyCIDRs = append(keyCIDRs, p.String())
		}
	}
	perms, cidrs, scope, e := narrow(base, covers, keyCIDRs, tr, st.rt)
	if e != nil {
		s.oauthFail(w, st, e)
		return
	}
	if cidrs == nil && id.TokenCIDRs != nil {
		cidrs = keyCIDRs
	}
	raw, c, err := st.rt.Keyset.Issue(token.Spec{Subject: id.KeyID, Client: cl.Key, Perms: perms, CIDRs: cidrs, TTL: st.rt.ClientTokenTTL}, st.now)
	if err != nil {
		s.log.Error("Failed to sign a token", "error", err)
		s.oauthFail(w, st, &oauthError{Code: "server_error", status: http.StatusInternalServerError})
		return
	}
	s.opts.Metrics.tokenIssued("client")
	st.reason = "client_token_issued"
	writeJSON(w, http.StatusCreated, tokenResponse{AccessToken: raw, TokenType: "Bearer", ExpiresIn: int64(c.Expiry.Time().Sub(st.now.Truncate(time.Second)) / time.Second),
		Scope: scope, AuthHeader: st.rt.Scheme + " " + raw})
}

// revokeAction: {"action":"revoke"} revokes the caller's own bearer token;
// with "access_token" it revokes a client token of the caller's key.
func (s *Server) revokeAction(w http.ResponseWriter, r *http.Request, st *request, tr *TokenRequest) {
	id := s.authenticate(w, r, st, true)
	if id == nil {
		return
	}
	target := id.Claims
	if tr.AccessToken != "" {
		if id.Client != "" {
			s.oauthFail(w, st, &oauthError{Code: "unauthorized_client", Description: "a client token cannot revoke other tokens", status: http.StatusForbidden})
			return
		}
		c, err := st.rt.Keyset.Verify(tr.AccessToken, st.now)
		if err != nil {
			s.oauthFail(w, st, &oauthError{Code: "invalid_grant", Description: "access_token is not a valid token", status: http.StatusBadRequest})
			return
		}
		if c.Subject != id.KeyID || c.Client == "" {
			s.oauthFail(w, st, &oauthError{Code: "unauthorized_client", Description: "access_token is not a client token of this key", status: http.StatusForbidden})
			return
		}
		target = c
	} else if target == nil {
		s.oauthFail(w, st, invalidRequest("revoke needs a bearer token (or access_token)"))
		return
	}
	if !s.persistRevocation(w, r, st, target) {
		return
	}
	st.reason = "token_revoked"
	writeJSON(w, http.StatusCreated, map[string]any{"revoked": true})
}

func (s *Server) persistRevocation(w http.ResponseWriter, r *http.Request, st *request, c *token.Claims) bool {
	if err := s.opts.Revocations.Revoke(r.Context(), c.ID, c.Expiry.Time()); err != nil {
		s.log.Error("Failed to persist a revocation", "jti", c.ID, "error", err)
		st.result, st.reason = "unavailable", "revocation_not_persisted"
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, &oauthError{Code: "temporarily_unavailable", Description: "the revocation could not be stored; the token is not revoked"})
		return false
	}
	s.opts.Metrics.tokenRevoked()
	s.log.Info("Revoked token", "jti", c.ID, "keyID", c.Subject, "clientKey", c.Client)
	return true
}

// clientAuth authenticates a caller of /oauth/revoke and /oauth/introspect:
// body client_id/client_secret, or any accepted Authorization.
func (s *Server) clientAuth(w http.ResponseWriter, r *http.Request, st *request, tr *TokenRequest) *authn.Identity {
	if tr.ClientID != "" || tr.ClientSecret != "" {
		if len(r.Header["Authorization"]) > 0 {
			s.oauthFail(w, st, invalidRequest("use one client authentication method"))
			return nil
		}
		id, ok := s.authSecret(w, st, tr.ClientID, tr.ClientSecret, invalidClientErr)
		if !ok {
			return nil
		}
		return id
	}
	return s.authenticate(w, r, st, true)
}

// serveRevoke is RFC 7009.
func (s *Server) serveRevoke(w http.ResponseWriter, r *http.Request, st *request) {
	w.Header().Set("Cache-Control", "no-store")
	tr, ok := s.readBody(w, r, st)
	if !ok {
		return
	}
	id := s.clientAuth(w, r, st, tr)
	if id == nil {
		return
	}
	if tr.Token == "" {
		s.oauthFail(w, st, invalidRequest("token is required"))
		return
	}
	c, err := st.rt.Keyset.Verify(tr.Token, st.now)
	if err != nil {
		// RFC 7009 §2.2: invalid tokens are not an error.
		w.WriteHeader(http.StatusOK)
		return
	}
	if c.Subject != id.KeyID || (id.Client != "" && c.Client != id.Client) {
		s.oauthFail(w, st, &oauthError{Code: "unauthorized_client", Description: "the token was not issued to this caller", status: http.StatusForbidden})
		return
	}
	if !s.persistRevocation(w, r, st, c) {
		return
	}
	st.reason = "token_revoked"
	w.WriteHeader(http.StatusOK)
}

// serveIntrospect is RFC 7662, for authenticated callers only.
func (s *Server) serveIntrospect(w http.ResponseWriter, r *http.Request, st *request) {
	w.Header().Set("Cache-Control", "no-store")
	tr, ok := s.readBody(w, r, st)
	if !ok {
		return
	}
	if s.clientAuth(w, r, st, tr) == nil {
		return
	}
	inactive := map[string]any{"active": false}
	if tr.Token == "" {
		s.oauthFail(w, st, invalidRequest("token is required"))
		return
	}
	c, err := st.rt.Keyset.Verify(tr.Token, st.now)
	if err != nil || s.opts.Revoked.Revoked(c.ID) {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	tid, ferr := authn.TokenIdentity(st.rt, c, st.now)
	if ferr != nil {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	out := map[string]any{
		"active": true, "token_type": "Bearer", "scope": strings.Join(tid.Perms.List(), " "),
		"sub": c.Subject, "iss": c.Issuer, "aud": []string(c.Audience), "jti": c.ID,
		"exp": c.Expiry.Time().Unix(), "iat": c.IssuedAt.Time().Unix(),
	}
	if c.NotBefore != nil {
		out["nbf"] = c.NotBefore.Time().Unix()
	}
	if c.Client != "" {
		out["client"] = c.Client
	}
	if len(c.CIDRs) > 0 {
		out["cidrs"] = c.CIDRs
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) serveJWKS(w http.ResponseWriter, r *http.Request, st *request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "method_not_allowed", Message: "use GET"})
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=60")
	b, err := json.Marshal(st.rt.Keyset.JWKS())
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{Error: "internal", Message: "cannot encode keys"})
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	_, _ = w.Write(b)
}

func (s *Server) serveAuthTest(w http.ResponseWriter, r *http.Request, st *request) {
	id := s.authenticate(w, r, st, false)
	if id == nil {
		return
	}
	perms := id.Perms.List()
	out := map[string]any{"authenticated": true, "keyId": id.KeyID, "via": id.Via, "permissions": perms}
	if id.Client != "" {
		out["client"] = id.Client
	}
	if id.Claims != nil {
		out["expiresAt"] = id.Claims.Expiry.Time().UTC().Format(time.RFC3339)
	}
	writeJSON(w, http.StatusOK, out)
}
