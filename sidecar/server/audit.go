package server

import (
	"net/http"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/authz"
)

// HeaderDecision tells the workload, under enforcement Audit, what Enforce
// would have done with the request: "allow" or "deny; reason=<reason>".
// Inbound copies are removed with the other X-Keygate-* headers.
const HeaderDecision = "X-Keygate-Decision"

// Audit denial reasons: the reason parameter of X-Keygate-Decision and the
// reason label of keygate_sidecar_audit_denials_total.
const (
	auditUnauthenticated = "unauthenticated"
	auditForbidden       = "forbidden"
	auditCIDR            = "cidr"
	auditRevoked         = "revoked"
	auditRateLimited     = "ratelimited"
)

// auditDeny forwards a request that Enforce would refuse, when the policy is
// in Audit and the request is on the path to the workload; it reports whether
// it did (otherwise the caller refuses as usual). reason is the header's
// reason, "forbidden:<permission>" included; the metric counts its category.
// Identity headers go along only if the caller authenticated (st.identity is
// set only then), so a denied request never looks authenticated.
func (s *Server) auditDeny(w http.ResponseWriter, r *http.Request, st *request, reason string) bool {
	if !st.auditable {
		return false
	}
	category := reason
	if len(reason) > len(auditForbidden) && reason[:len(auditForbidden)+1] == auditForbidden+":" {
		category = auditForbidden
	}
	st.result, st.reason = "audit_deny", category
	st.decision = "deny; reason=" + reason
	s.opts.Metrics.auditDenial(category)
	s.proxy.ServeHTTP(w, r)
	return true
}

// authnAuditReason maps an authentication failure to its audit reason.
func authnAuditReason(reason string) string {
	switch reason {
	case authn.ReasonCIDR:
		return auditCIDR
	case authn.ReasonRevoked:
		return auditRevoked
	}
	return auditUnauthenticated
}

// authzAuditReason is "forbidden:<permission>", or "forbidden" when no rule
// matched the request (defaultAction Deny).
func authzAuditReason(d authz.Decision, perm string) string {
	if d == authz.MissingPermission && perm != "" {
		return auditForbidden + ":" + perm
	}
	return auditForbidden
}

// setDecision adds X-Keygate-Decision to a request forwarded under Audit:
// the denial recorded on the way, or allow.
func setDecision(h http.Header, st *request) {
	if st.rt == nil || !st.rt.Audit {
		return
	}
	d := st.decision
	if d == "" {
		d = "allow"
	}
	h[HeaderDecision] = []string{d}
}
