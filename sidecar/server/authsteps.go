package server

import (
	"net/http"
	"strings"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/authz"
	"github.com/keygate-dev/keygate/sidecar/tokenendpoint"
)

// authenticate runs authentication, failure limits and the CIDR check.
// On failure it has written the response and returns nil.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, st *request, oauth bool) *authn.Identity {
	addrKey := st.addrText
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
