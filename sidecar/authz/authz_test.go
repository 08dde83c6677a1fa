package authz

import (
	"testing"

	"github.com/keygate-dev/keygate/api/bundle"
)

func TestRules(t *testing.T) {
	rs := CompileRules([]bundle.Rule{
		{Methods: []string{"GET"}, Paths: []string{"/charges", "/charges/*"}, Permission: "charges:List"},
		{Methods: []string{"*"}, Paths: []string{"/reports/*"}, Permission: "reports:Get"},
		{Paths: []string{"/*"}, Permission: "any:Thing"},
	}, "Deny")
	perms := NewPermissions([]string{"charges:List", "reports:All"})
	for _, tc := range []struct {
		method, path string
		want         Decision
		perm         string
	}{
		{"GET", "/charges", Allow, "charges:List"},
		{"GET", "/charges/", Allow, "charges:List"},
		{"GET", "/charges/x", Allow, "charges:List"},
		{"GET", "/chargesx", MissingPermission, "any:Thing"},
		{"POST", "/reports/x", Allow, "reports:Get"},
		{"POST", "/charges", MissingPermission, "any:Thing"},
		{"GET", "/", MissingPermission, "any:Thing"},
		{"HEAD", "/charges", Allow, "charges:List"},
		{"get", "/charges/x", Allow, "charges:List"},
	} {
		d, p := rs.Authorize(tc.method, tc.path, perms)
		if d != tc.want || p != tc.perm {
			t.Errorf("%s %s: %v %q, want %v %q", tc.method, tc.path, d, p, tc.want, tc.perm)
		}
	}
	if d, _ := CompileRules(nil, "Deny").Authorize("GET", "/", perms); d != NoRule {
		t.Error("default Deny")
	}
	if d, _ := CompileRules(nil, "Authenticated").Authorize("GET", "/", perms); d != Allow {
		t.Error("default Authenticated")
	}
}

func TestPermissions(t *testing.T) {
	p := NewPermissions([]string{"charges:List", "reports:All"})
	if !p.Covers("reports:Get") || !p.Covers("charges:List") || p.Covers("charges:Create") || p.Covers("reports") {
		t.Fatal("Covers")
	}
	if got := p.Restrict([]string{"reports:Get", "charges:Create", "charges:List", "charges:List"}); len(got) != 2 {
		t.Fatalf("Restrict: %v", got)
	}
}
