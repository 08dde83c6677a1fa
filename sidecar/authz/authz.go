// Package authz decides whether an authenticated identity may make a request:
// rules matched by method and path (first match wins), permissions of the form
// resource:Action where resource:All covers every action of that resource.
package authz

import (
	"sort"
	"strings"

	"github.com/keygate-dev/keygate/api/bundle"
)

// Permissions is a set of resource:Action permissions.
type Permissions map[string]struct{}

// NewPermissions builds a set from a list.
func NewPermissions(perms []string) Permissions {
	p := make(Permissions, len(perms))
	for _, s := range perms {
		if s != "" {
			p[s] = struct{}{}
		}
	}
	return p
}

// Covers reports whether the set grants perm, directly or through resource:All.
func (p Permissions) Covers(perm string) bool {
	if _, ok := p[perm]; ok {
		return true
	}
	if i := strings.LastIndexByte(perm, ':'); i > 0 {
		_, ok := p[perm[:i]+":All"]
		return ok
	}
	return false
}

// Restrict returns the permissions of want that p covers, sorted: the way a
// token or a client is narrowed to what its key may do.
func (p Permissions) Restrict(want []string) []string {
	out := make([]string, 0, len(want))
	for _, w := range want {
		if w != "" && p.Covers(w) {
			out = append(out, w)
		}
	}
	sort.Strings(out)
	return dedupe(out)
}

// List returns the permissions sorted.
func (p Permissions) List() []string {
	out := make([]string, 0, len(p))
	for k := range p {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func dedupe(s []string) []string {
	if len(s) < 2 {
		return s
	}
	j := 1
	for i := 1; i < len(s); i++ {
		if s[i] != s[j-1] {
			s[j] = s[i]
			j++
		}
	}
	return s[:j]
}

// Decision is the outcome of Authorize.
type Decision int

const (
	// Allow lets the request through.
	Allow Decision = iota
	// MissingPermission refuses it: the matched rule's permission is not held.
	MissingPermission
	// NoRule refuses it: no rule matched and the default action is Deny.
	NoRule
)

type rule struct {
	methods  map[string]bool // nil = every method
	exact    map[string]bool
	prefixes []string // "/charges/" for "/charges/*" (matches "/charges/" and below)
	perm     string
}

// Rules is a compiled, immutable rule list.
type Rules struct {
	rules    []rule
	denyRest bool
}

// CompileRules compiles the policy's rules and default action.
func CompileRules(rs []bundle.Rule, defaultAction string) *Rules {
	out := &Rules{denyRest: defaultAction != "Authenticated"}
	for _, r := range rs {
		c := rule{exact: map[string]bool{}, perm: r.Permission}
		for _, m := range r.Methods {
			if m == "*" {
				c.methods = nil
				break
			}
			if c.methods == nil {
				c.methods = map[string]bool{}
			}
			c.methods[strings.ToUpper(m)] = true
		}
		for _, p := range r.Paths {
			if p == "/*" || p == "*" {
				c.prefixes = append(c.prefixes, "/")
			} else if strings.HasSuffix(p, "/*") {
				c.prefixes = append(c.prefixes, strings.TrimSuffix(p, "*"))
			} else {
				c.exact[p] = true
			}
		}
		out.rules = append(out.rules, c)
	}
	return out
}

// Match returns the permission the first matching rule requires; ok is false
// when no rule matches.
// Methods match case-insensitively, and HEAD also matches a rule listing GET
// (upstreams answer HEAD with their GET handler).
func (rs *Rules) Match(method, path string) (perm string, ok bool) {
	method = strings.ToUpper(method)
	for i := range rs.rules {
		r := &rs.rules[i]
		if r.methods != nil && !r.methods[method] && (method != "HEAD" || !r.methods["GET"]) {
			continue
		}
		if r.exact[path] {
			return r.perm, true
		}
		for _, p := range r.prefixes {
			if strings.HasPrefix(path, p) {
				return r.perm, true
			}
		}
	}
	return "", false
}

// Authorize decides a request by an identity holding perms. It returns the
// permission involved (the missing one on MissingPermission).
func (rs *Rules) Authorize(method, path string, perms Permissions) (Decision, string) {
	perm, ok := rs.Match(method, path)
	if !ok {
		if rs.denyRest {
			return NoRule, ""
		}
		return Allow, ""
	}
	if perms.Covers(perm) {
		return Allow, perm
	}
	return MissingPermission, perm
}
