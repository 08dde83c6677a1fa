package tokenendpoint

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/token"
)

// revokeAction: {"action":"revoke"} revokes the caller's own bearer token;
// with "access_token" it revokes a client token of the caller's key.
func (e *Endpoint) revokeAction(w http.ResponseWriter, r *http.Request, call Call, tr *TokenRequest) {
	id := e.gate.Authenticate(w, r, true)
	if id == nil {
		return
	}
	target := id.Claims
	if tr.AccessToken != "" {
		if id.Client != "" {
			e.oauthFail(w, call, &oauthError{Code: "unauthorized_client", Description: "a client token cannot revoke other tokens", status: http.StatusForbidden})
			return
		}
		c, err := call.Runtime().Keyset.Verify(tr.AccessToken, call.Now())
		if err != nil {
			e.oauthFail(w, call, &oauthError{Code: "invalid_grant", Description: "access_token is not a valid token", status: http.StatusBadRequest})
			return
		}
		if c.Subject != id.KeyID || c.Client == "" {
			e.oauthFail(w, call, &oauthError{Code: "unauthorized_client", Description: "access_token is not a client token of this key", status: http.StatusForbidden})
			return
		}
		target = c
	} else if target == nil {
		e.oauthFail(w, call, invalidRequest("revoke needs a bearer token (or access_token)"))
		return
	}
	if !e.persistRevocation(w, r, call, target) {
		return
	}
	call.SetReason("token_revoked")
	writeJSON(w, http.StatusCreated, map[string]any{"revoked": true})
}

func (e *Endpoint) persistRevocation(w http.ResponseWriter, r *http.Request, call Call, c *token.Claims) bool {
	if err := e.revocations.Revoke(r.Context(), c.ID, c.Expiry.Time()); err != nil {
		e.log.Error("Failed to persist a revocation", "jti", c.ID, "error", err)
		call.SetResult("unavailable", "revocation_not_persisted")
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, &oauthError{Code: "temporarily_unavailable", Description: "the revocation could not be stored; the token is not revoked"})
		return false
	}
	e.gate.TokenRevoked()
	e.log.Info("Revoked token", "jti", c.ID, "keyID", c.Subject, "clientKey", c.Client)
	return true
}

// clientAuth authenticates a caller of /oauth/revoke and /oauth/introspect:
// body client_id/client_secret, or any accepted Authorization.
func (e *Endpoint) clientAuth(w http.ResponseWriter, r *http.Request, call Call, tr *TokenRequest) *authn.Identity {
	if tr.ClientID != "" || tr.ClientSecret != "" {
		if len(r.Header["Authorization"]) > 0 {
			e.oauthFail(w, call, invalidRequest("use one client authentication method"))
			return nil
		}
		id, ok := e.authSecret(w, r, call, tr.ClientID, tr.ClientSecret, invalidClientErr)
		if !ok {
			return nil
		}
		return id
	}
	return e.gate.Authenticate(w, r, true)
}

// serveRevoke is RFC 7009.
func (e *Endpoint) serveRevoke(w http.ResponseWriter, r *http.Request, call Call) {
	w.Header().Set("Cache-Control", "no-store")
	tr, ok := e.readBody(w, r, call)
	if !ok {
		return
	}
	id := e.clientAuth(w, r, call, tr)
	if id == nil {
		return
	}
	if tr.Token == "" {
		e.oauthFail(w, call, invalidRequest("token is required"))
		return
	}
	c, err := call.Runtime().Keyset.Verify(tr.Token, call.Now())
	if err != nil {
		// RFC 7009 §2.2: invalid tokens are not an error.
		w.WriteHeader(http.StatusOK)
		return
	}
	if c.Subject != id.KeyID || (id.Client != "" && c.Client != id.Client) {
		e.oauthFail(w, call, &oauthError{Code: "unauthorized_client", Description: "the token was not issued to this caller", status: http.StatusForbidden})
		return
	}
	if !e.persistRevocation(w, r, call, c) {
		return
	}
	call.SetReason("token_revoked")
	w.WriteHeader(http.StatusOK)
}

// serveIntrospect is RFC 7662, for authenticated callers only.
func (e *Endpoint) serveIntrospect(w http.ResponseWriter, r *http.Request, call Call) {
	w.Header().Set("Cache-Control", "no-store")
	tr, ok := e.readBody(w, r, call)
	if !ok {
		return
	}
	if e.clientAuth(w, r, call, tr) == nil {
		return
	}
	inactive := map[string]any{"active": false}
	if tr.Token == "" {
		e.oauthFail(w, call, invalidRequest("token is required"))
		return
	}
	c, err := call.Runtime().Keyset.Verify(tr.Token, call.Now())
	if err != nil || e.revoked.Revoked(c.ID) {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	tid, ferr := authn.TokenIdentity(call.Runtime(), c, call.Now())
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

func (e *Endpoint) serveJWKS(w http.ResponseWriter, r *http.Request, call Call) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "method_not_allowed", Message: "use GET"})
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=60")
	b, err := json.Marshal(call.Runtime().Keyset.JWKS())
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{Error: "internal", Message: "cannot encode keys"})
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	_, _ = w.Write(b)
}

func (e *Endpoint) serveAuthTest(w http.ResponseWriter, r *http.Request) {
	id := e.gate.Authenticate(w, r, false)
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
