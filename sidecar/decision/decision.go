// Package decision explains the decision a sidecar takes on a request by a
// known key: which path class it falls in (public, served by the sidecar, or
// guarded), whether the key (or one of its clients) authenticates, the CIDR
// verdict, which rule matched and whether the permission it needs is held.
//
// It composes the sidecar's own steps — authn.KeyIdentity, authn.CheckAddress,
// the compiled authz.Rules and the runtime's path sets — in the order the
// server's chain runs them, so `kubectl keygate can-i` cannot drift from what
// a sidecar does. The package's tests compare it with a running sidecar,
// under enforcement Enforce and Audit. Not modelled: failure-limit and rate
// limit 429s (they depend on traffic), method-override headers and
// non-canonical paths (refused with 400 before any rule).
package decision

import (
	"net/http"
	"net/netip"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/authz"
	"github.com/keygate-dev/keygate/sidecar/config"
)

// Reasons beside authn's (unknown_key, key_expired, unknown_client, cidr);
// they are the words of the sidecar's access log and metrics.
const (
	ReasonPublic            = "public"
	ReasonEndpoint          = "sidecar_endpoint"
	ReasonRule              = "rule"
	ReasonDefaultAction     = "default_action"
	ReasonMissingPermission = "missing_permission"
	ReasonNoRule            = "no_rule"
)

// Request is the request to explain.
type Request struct {
	Method string
	Path   string
	// KeyID is the key's ID; Client optionally names one of its clients
	// (the identity then holds the client's permissions).
	KeyID  string
	Client string
	// From is the client address after trusted proxies are resolved; the
	// zero value leaves the CIDR check out (reported as not checked).
	From netip.Addr
	// SidecarPaths are the reserved paths the sidecar serves itself besides
	// the policy's token paths (revoke, introspection, JWKS, auth test).
	SidecarPaths []string
	// Now is when the key's expiry is judged.
	Now time.Time
}

// CIDR is the address verdict.
type CIDR struct {
	// Checked is false when no address was given.
	Checked bool `json:"checked"`
	Allowed bool `json:"allowed"`
	// Policy and Key are the blocks that apply (empty: any address).
	Policy []string `json:"policy,omitempty"`
	Key    []string `json:"key,omitempty"`
}

// Decision is the sidecar's answer and why.
type Decision struct {
	// Allowed is the enforcing decision.
	Allowed bool `json:"allowed"`
	// Audit is set when the policy's enforcement is Audit and the request
	// is on the path to the workload: a refusal is then only reported (the
	// request is forwarded with X-Keygate-Decision: deny; reason=…).
	Audit bool `json:"audit,omitempty"`
	// Status is what the sidecar answers itself: 401 or 403 on a refusal,
	// 0 when the request goes on (to the upstream or the sidecar's endpoint,
	// or forwarded under Audit).
	Status int    `json:"status,omitempty"`
	Reason string `json:"reason"`
	// Rule is the index in policy.rules of the first matching rule, or -1.
	Rule          int          `json:"rule"`
	RuleText      *bundle.Rule `json:"ruleText,omitempty"`
	DefaultAction string       `json:"defaultAction"`
	// Permission is the one the matched rule requires; Held whether the
	// identity holds it (directly or through resource:All).
	Permission  string   `json:"permission,omitempty"`
	Held        bool     `json:"held"`
	Permissions []string `json:"permissions"`
	CIDR        CIDR     `json:"cidr"`
}

// Explain decides req against the compiled bundle rt, step by step in the
// order of the sidecar's chain: route (token and reserved paths, public
// paths), authentication, CIDR, permissions.
func Explain(rt *config.Runtime, req Request) Decision {
	d := Decision{Rule: -1, DefaultAction: rt.Policy.DefaultAction, Permissions: []string{},
		CIDR: CIDR{Policy: rt.Policy.AllowedCIDRs}}
	switch {
	case rt.TokenPaths[req.Path] || contains(req.SidecarPaths, req.Path):
		d.Allowed, d.Reason = true, ReasonEndpoint
		return d
	case rt.PublicPaths[req.Path]:
		d.Allowed, d.Reason = true, ReasonPublic
		return d
	}
	d.Audit = rt.Audit
	k := rt.Key(req.KeyID)
	if k == nil {
		return refuse(d, http.StatusUnauthorized, authn.ReasonUnknownKey)
	}
	d.CIDR.Key = cidrStrings(k.CIDRs)
	if !k.Usable(req.Now) {
		return refuse(d, http.StatusUnauthorized, authn.ReasonKeyExpired)
	}
	id, ferr := authn.KeyIdentity(k, req.Client, authn.ViaAPIKey)
	if ferr != nil {
		return refuse(d, http.StatusUnauthorized, ferr.Reason)
	}
	d.Permissions = id.Perms.List()
	if req.From.IsValid() {
		d.CIDR.Checked = true
		d.CIDR.Allowed = authn.CheckAddress(rt, id, req.From.Unmap()) == nil
		if !d.CIDR.Allowed {
			return refuse(d, http.StatusUnauthorized, authn.ReasonCIDR)
		}
	}
	decision, perm := rt.Rules.Authorize(req.Method, req.Path, id.Perms)
	d.Permission = perm
	d.Rule = matchedRule(rt.Policy.Rules, req.Method, req.Path)
	if d.Rule >= 0 {
		d.RuleText = &rt.Policy.Rules[d.Rule]
	}
	switch decision {
	case authz.Allow:
		d.Allowed, d.Held = true, perm != ""
		d.Reason = ReasonRule
		if perm == "" {
			d.Reason = ReasonDefaultAction
		}
	case authz.MissingPermission:
		return refuse(d, http.StatusForbidden, ReasonMissingPermission)
	default:
		return refuse(d, http.StatusForbidden, ReasonNoRule)
	}
	return d
}

func refuse(d Decision, status int, reason string) Decision {
	d.Allowed, d.Status, d.Reason = false, status, reason
	if d.Audit {
		d.Status = 0 // forwarded, the refusal only reported
	}
	return d
}

// matchedRule finds the index of the first rule matching, each rule compiled
// alone by the sidecar's own compiler.
func matchedRule(rules []bundle.Rule, method, path string) int {
	for i, r := range rules {
		if _, ok := authz.CompileRules([]bundle.Rule{r}, "Deny").Match(method, path); ok {
			return i
		}
	}
	return -1
}

func cidrStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
