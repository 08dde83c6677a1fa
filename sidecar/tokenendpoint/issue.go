package tokenendpoint

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/clientaddr"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/token"
)

// tokenResponse is every token endpoint's success body.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
	Username    string `json:"username,omitempty"`
	AuthHeader  string `json:"auth_header"`
}

func (e *Endpoint) readBody(w http.ResponseWriter, r *http.Request, call Call) (*TokenRequest, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		e.oauthFail(w, call, &oauthError{Code: "invalid_request", Description: "use POST", status: http.StatusMethodNotAllowed})
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		// The client's fault, and its framing can no longer be trusted.
		code, reason := bodyFailure(err)
		call.SetResult("bad_request", reason)
		w.Header().Set("Connection", "close")
		if code == http.StatusRequestEntityTooLarge {
			e.oauthFail(w, call, &oauthError{Code: "invalid_request", Description: "body too large", status: code})
		} else {
			e.oauthFail(w, call, invalidRequest("body unreadable"))
		}
		return nil, false
	}
	tr, err := ParseTokenRequest(r.Header.Get("Content-Type"), body)
	if err != nil {
		var oe *oauthError
		errors.As(err, &oe)
		e.oauthFail(w, call, oe)
		return nil, false
	}
	return tr, true
}

// authSecret authenticates a key ID and secret from a body and applies the
// failure limits and CIDR lists. ok false: response written.
func (e *Endpoint) authSecret(w http.ResponseWriter, r *http.Request, call Call, keyID, secret string, onFail *oauthError) (*authn.Identity, bool) {
	if e.gate.Blocked(w, r, keyID) {
		return nil, false
	}
	k, ferr := authn.CheckSecret(call.Runtime(), keyID, secret, call.Now())
	var id *authn.Identity
	if ferr == nil {
		id, ferr = authn.KeyIdentity(k, "", authn.ViaBasic)
	}
	if ferr == nil {
		ferr = authn.CheckAddress(call.Runtime(), id, call.ClientAddr())
	}
	if ferr != nil {
		e.gate.Failed(r, keyID)
		call.SetResult("unauthenticated", ferr.Reason)
		e.oauthFail(w, call, onFail)
		return nil, false
	}
	call.SetIdentity(id)
	return id, true
}

// tlsRequired is the answer of a token path over plain HTTP when the policy
// sets tokenEndpoint.requireTLS.
var tlsRequired = invalidRequest("the token endpoint requires HTTPS")

func (e *Endpoint) serveToken(w http.ResponseWriter, r *http.Request, call Call) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if rt := call.Runtime(); rt.Policy.RequireTLS && !rt.Resolver.Secure(r) {
		// Refused before the body is read: no credentials are checked and no
		// token crosses the plain connection.
		call.SetResult("token_error", "tls_required")
		e.oauthFail(w, call, tlsRequired)
		return
	}
	tr, ok := e.readBody(w, r, call)
	if !ok {
		return
	}
	rt := call.Runtime()
	switch {
	case tr.GrantType == "password":
		if !rt.Grants[config.GrantPassword] {
			e.oauthFail(w, call, &oauthError{Code: "unsupported_grant_type", Description: "grant password is not enabled", status: http.StatusBadRequest})
			return
		}
		if tr.Username == "" || tr.Password == "" {
			e.oauthFail(w, call, invalidRequest("username and password are required"))
			return
		}
		id, ok := e.authSecret(w, r, call, tr.Username, tr.Password,
			&oauthError{Code: "invalid_grant", Description: "the credentials are invalid", status: http.StatusBadRequest})
		if !ok {
			return
		}
		e.issue(w, r, call, id, tr, http.StatusOK, "bearer", tr.Username)
	case tr.GrantType == "client_credentials":
		if !rt.Grants[config.GrantClientCredentials] {
			e.oauthFail(w, call, &oauthError{Code: "unsupported_grant_type", Description: "grant client_credentials is not enabled", status: http.StatusBadRequest})
			return
		}
		keyID, secret := tr.ClientID, tr.ClientSecret
		if auth := r.Header["Authorization"]; len(auth) > 0 {
			if len(auth) > 1 || keyID != "" || secret != "" {
				e.oauthFail(w, call, invalidRequest("use one client authentication method"))
				return
			}
			cred, err := authn.ParseAuthorization(auth[0], nil)
			if err != nil || !cred.Basic {
				call.SetResult("unauthenticated", authn.ReasonMalformed)
				e.invalidClient(w, call)
				return
			}
			keyID, secret = cred.User, cred.Password
		}
		if keyID == "" || secret == "" {
			call.SetResult("unauthenticated", authn.ReasonNoCredentials)
			e.invalidClient(w, call)
			return
		}
		id, ok := e.authSecret(w, r, call, keyID, secret, invalidClientErr)
		if !ok {
			return
		}
		e.issue(w, r, call, id, tr, http.StatusOK, "Bearer", "")
	case tr.GrantType != "":
		e.oauthFail(w, call, &oauthError{Code: "unsupported_grant_type", Description: "grant_type " + tr.GrantType + " is not supported", status: http.StatusBadRequest})
	case tr.Action == "revoke":
		e.revokeAction(w, r, call, tr)
	case tr.Action != "":
		e.oauthFail(w, call, invalidRequest("unknown action"))
	case tr.APIKey != "" || tr.Username != "":
		if !rt.Grants[config.GrantAPIKey] {
			e.oauthFail(w, call, &oauthError{Code: "unsupported_grant_type", Description: "grant api_key is not enabled", status: http.StatusBadRequest})
			return
		}
		keyID := tr.APIKey
		if keyID == "" {
			keyID = tr.Username
		} else if tr.Username != "" {
			e.oauthFail(w, call, invalidRequest("give apiKey or username, not both"))
			return
		}
		if tr.Secret == "" {
			e.oauthFail(w, call, invalidRequest("secret is required"))
			return
		}
		id, ok := e.authSecret(w, r, call, keyID, tr.Secret, invalidClientErr)
		if !ok {
			return
		}
		e.issue(w, r, call, id, tr, http.StatusCreated, "Bearer", "")
	case tr.ClientKey != "":
		if !rt.Grants[config.GrantClientToken] {
			e.oauthFail(w, call, &oauthError{Code: "unsupported_grant_type", Description: "grant client_token is not enabled", status: http.StatusBadRequest})
			return
		}
		id := e.gate.Authenticate(w, r, true)
		if id == nil {
			return
		}
		if id.Client != "" {
			e.oauthFail(w, call, &oauthError{Code: "unauthorized_client", Description: "a client token cannot issue client tokens", status: http.StatusForbidden})
			return
		}
		if id.Key.Clients[tr.ClientKey] == nil {
			e.oauthFail(w, call, &oauthError{Code: "invalid_grant", Description: "clientKey is not a client of this key", status: http.StatusBadRequest})
			return
		}
		e.issueClient(w, r, call, id, tr)
	default:
		e.oauthFail(w, call, invalidRequest("no grant_type, credentials, clientKey or action"))
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

func (e *Endpoint) issue(w http.ResponseWriter, r *http.Request, call Call, id *authn.Identity, tr *TokenRequest, status int, tokenType, username string) {
	if !e.gate.AllowToken(w, r, id) {
		return
	}
	perms, cidrs, scope, oe := narrow(id.Key.PermList, id.Perms.Covers, cidrStrings(id), tr, call.Runtime())
	if oe != nil {
		e.oauthFail(w, call, oe)
		return
	}
	raw, c, err := call.Runtime().Keyset.Issue(token.Spec{Subject: id.KeyID, Perms: perms, CIDRs: cidrs, TTL: call.Runtime().TokenTTL}, call.Now())
	if err != nil {
		e.log.Error("Failed to sign a token", "error", err)
		e.oauthFail(w, call, &oauthError{Code: "server_error", status: http.StatusInternalServerError})
		return
	}
	e.gate.TokenIssued("platform")
	call.SetReason("token_issued")
	writeJSON(w, status, tokenResponse{AccessToken: raw, TokenType: tokenType, ExpiresIn: int64(c.Expiry.Time().Sub(call.Now().Truncate(time.Second)) / time.Second),
		Scope: scope, Username: username, AuthHeader: call.Runtime().Scheme + " " + raw})
}

func (e *Endpoint) issueClient(w http.ResponseWriter, r *http.Request, call Call, id *authn.Identity, tr *TokenRequest) {
	if !e.gate.AllowToken(w, r, id) {
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
	perms, cidrs, scope, oe := narrow(base, covers, keyCIDRs, tr, call.Runtime())
	if oe != nil {
		e.oauthFail(w, call, oe)
		return
	}
	if cidrs == nil && id.TokenCIDRs != nil {
		cidrs = keyCIDRs
	}
	raw, c, err := call.Runtime().Keyset.Issue(token.Spec{Subject: id.KeyID, Client: cl.Key, Perms: perms, CIDRs: cidrs, TTL: call.Runtime().ClientTokenTTL}, call.Now())
	if err != nil {
		e.log.Error("Failed to sign a token", "error", err)
		e.oauthFail(w, call, &oauthError{Code: "server_error", status: http.StatusInternalServerError})
		return
	}
	e.gate.TokenIssued("client")
	call.SetReason("client_token_issued")
	writeJSON(w, http.StatusCreated, tokenResponse{AccessToken: raw, TokenType: "Bearer", ExpiresIn: int64(c.Expiry.Time().Sub(call.Now().Truncate(time.Second)) / time.Second),
		Scope: scope, AuthHeader: call.Runtime().Scheme + " " + raw})
}
