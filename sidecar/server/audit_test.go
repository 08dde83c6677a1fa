package server

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// spoofed are identity and decision headers a client sends to look allowed;
// the upstream must never see them.
var spoofed = []string{
	HeaderKeyID, "apk-lake", HeaderPermissions, "charges:All", HeaderClient, "acme",
	HeaderDecision, "allow", "X_Keygate_Decision", "allow", "x-keygate-decision", "allow",
}

func TestAuditForwardsRefusalsWithDecision(t *testing.T) {
	f := sidecartest.ChargesFixture()
	f.Bundle.Policy.Enforcement = bundle.EnforcementAudit
	h := newHarness(t, f)
	lake, other := f.Secrets["apk-lake"], f.Secrets["apk-other"]

	revokedTok := h.Token("apk-other")
	if r := h.Do("POST", "/api/token", `{"action":"revoke"}`, "Content-Type", "application/json", "Authorization", "Bearer "+revokedTok); r.Status != http.StatusCreated {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}

	for _, tc := range []struct {
		name, method, path string
		auth               string
		decision, keyID    string
	}{
		{"allowed", "GET", "/charges", sidecartest.Basic("apk-lake", lake), "allow", "apk-lake"},
		{"public path", "GET", "/healthz", "", "allow", ""},
		{"no credentials", "GET", "/charges", "", "deny; reason=unauthenticated", ""},
		{"wrong secret", "GET", "/charges", sidecartest.Basic("apk-lake", lake+"x"), "deny; reason=unauthenticated", ""},
		{"unknown key", "GET", "/charges", sidecartest.Basic("apk-nobody", lake), "deny; reason=unauthenticated", ""},
		{"expired key", "GET", "/charges", sidecartest.Basic("apk-old", f.Secrets["apk-old"]), "deny; reason=unauthenticated", ""},
		{"outside the key's CIDRs", "GET", "/charges", sidecartest.Basic("apk-far", f.Secrets["apk-far"]), "deny; reason=cidr", ""},
		{"revoked token", "GET", "/charges", "Bearer " + revokedTok, "deny; reason=revoked", ""},
		{"missing permission", "GET", "/reports/q1", sidecartest.Basic("apk-other", other), "deny; reason=forbidden:reports:Read", "apk-other"},
		{"method override needing a permission", "GET", "/charges?_method=POST", sidecartest.Basic("apk-lake", lake), "deny; reason=forbidden:charges:Create", "apk-lake"},
		{"no rule", "GET", "/elsewhere", sidecartest.Basic("apk-lake", lake), "deny; reason=forbidden", "apk-lake"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := append([]string{}, spoofed...)
			if tc.auth != "" {
				hdr = append(hdr, "Authorization", tc.auth)
			}
			r := h.Do(tc.method, tc.path, "", hdr...)
			if r.Status != http.StatusOK {
				t.Fatalf("audit mode refused: %d %s", r.Status, r.Body)
			}
			seen := r.Seen(t)
			if got := seen.Headers[HeaderDecision]; len(got) != 1 || got[0] != tc.decision {
				t.Fatalf("%s = %q, want [%q]", HeaderDecision, got, tc.decision)
			}
			if got := seen.Headers["X_keygate_decision"]; got != nil {
				t.Fatalf("spoofed underscore header reached the upstream: %q", got)
			}
			gotKey := seen.Headers[HeaderKeyID]
			if tc.keyID == "" && gotKey != nil {
				t.Fatalf("a denied caller reached the upstream as %q", gotKey)
			}
			if tc.keyID != "" && (len(gotKey) != 1 || gotKey[0] != tc.keyID) {
				t.Fatalf("%s = %q, want %q", HeaderKeyID, gotKey, tc.keyID)
			}
			if tc.keyID != "apk-lake" && seen.Headers[HeaderClient] != nil {
				t.Fatalf("spoofed %s reached the upstream: %q", HeaderClient, seen.Headers[HeaderClient])
			}
			if tc.keyID == "" && seen.Headers[HeaderPermissions] != nil {
				t.Fatalf("spoofed %s reached the upstream: %q", HeaderPermissions, seen.Headers[HeaderPermissions])
			}
		})
	}

	m := h.srv.opts.Metrics
	for reason, want := range map[string]float64{"unauthenticated": 4, "cidr": 1, "revoked": 1, "forbidden": 3, "ratelimited": 0} {
		if got := counterValue(t, m.audit.WithLabelValues(reason)); got != want {
			t.Errorf("keygate_sidecar_audit_denials_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}

func TestAuditForwardsFailureLimitedRequests(t *testing.T) {
	f := sidecartest.ChargesFixture()
	f.Bundle.Policy.Enforcement = bundle.EnforcementAudit
	h := newHarness(t, f, func(o *Options) { o.FailureLimit = 3 })
	// The failure limit (3 here) still counts; once tripped, a request is
	// forwarded as ratelimited, without identity, rather than refused with 429.
	for i := 0; i < 3; i++ {
		h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", "wrong"))
	}
	r := h.Do("GET", "/charges", "", append(append([]string{}, spoofed...), "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"]))...)
	seen := r.Seen(t)
	if got := seen.Headers[HeaderDecision]; len(got) != 1 || got[0] != "deny; reason=ratelimited" {
		t.Fatalf("after the failure limit: %s = %q", HeaderDecision, got)
	}
	if seen.Headers[HeaderKeyID] != nil || seen.Headers[HeaderPermissions] != nil {
		t.Fatal("a throttled caller reached the upstream with an identity")
	}
	m := h.srv.opts.Metrics
	if u, rl := counterValue(t, m.audit.WithLabelValues("unauthenticated")), counterValue(t, m.audit.WithLabelValues("ratelimited")); u != 3 || rl != 1 {
		t.Fatalf("audit denials: unauthenticated %v (want 3), ratelimited %v (want 1)", u, rl)
	}
}

func TestAuditLeavesTokenEndpointEnforced(t *testing.T) {
	f := sidecartest.ChargesFixture()
	f.Bundle.Policy.Enforcement = bundle.EnforcementAudit
	h := newHarness(t, f)
	r := h.Do("POST", "/api/token", `{"apiKey":"apk-lake","secret":"wrong"}`, "Content-Type", "application/json")
	if r.Status != http.StatusUnauthorized || r.JSON(t)["error"] != "invalid_client" {
		t.Fatalf("token endpoint under Audit with a wrong secret: %d %s", r.Status, r.Body)
	}
	sidecartest.Expect401(t, h.Do("GET", PathAuthTest, ""), sidecartest.Challenge)
	r = h.Do("POST", PathIntrospect, "token=nonsense", "Content-Type", "application/x-www-form-urlencoded")
	if r.Status == http.StatusOK && r.JSON(t)["active"] == true {
		t.Fatalf("introspection under Audit: %d %s", r.Status, r.Body)
	}
}

func TestEnforceSendsNoDecisionHeader(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	r := h.Do("GET", "/charges", "", append(append([]string{}, spoofed...), "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"]))...)
	seen := r.Seen(t)
	if got := seen.Headers[HeaderDecision]; got != nil {
		t.Fatalf("Enforce forwarded %s = %q", HeaderDecision, got)
	}
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", spoofed...), sidecartest.Challenge)
	r = h.Do("GET", "/reports/q1", "", "Authorization", sidecartest.Basic("apk-other", f.Secrets["apk-other"]))
	if r.Status != http.StatusForbidden {
		t.Fatalf("Enforce let a forbidden request through: %d %s", r.Status, r.Body)
	}
}

// counterValue reads one counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	m := &dto.Metric{}
	if err := c.Write(m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestAuditDenialsAreLoggedAtInfo(t *testing.T) {
	f := sidecartest.ChargesFixture()
	f.Bundle.Policy.Enforcement = bundle.EnforcementAudit
	logs := &syncBuffer{}
	h := newHarness(t, f, func(o *Options) { o.Log = slog.New(slog.NewJSONHandler(logs, nil)) })
	wrong := f.Secrets["apk-lake"] + "x"
	h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", wrong))
	h.Do("GET", "/charges", "", "Authorization", sidecartest.Basic("apk-lake", f.Secrets["apk-lake"]))
	out := logs.String()
	if strings.Count(out, `"result":"audit_deny"`) != 1 || !strings.Contains(out, `"level":"INFO"`) || !strings.Contains(out, `"reason":"unauthenticated"`) {
		t.Fatalf("want one audit denial logged at info, got:\n%s", out)
	}
	if strings.Contains(out, wrong) || strings.Contains(out, f.Secrets["apk-lake"]) {
		t.Fatal("a secret reached the log")
	}
}
