package server

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func limitedFixture() *bundletest.Fixture {
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Methods: []string{"GET"}, Paths: []string{"/charges"}, Permission: "charges:List"}}
	f.Bundle.Policy.RateLimit = &bundle.RateLimit{Requests: 100, PerMillis: 1000, Burst: 100}
	// 2 per second, burst 2: one request every 500ms.
	f.AddKey("apk-slow", []string{"charges:List"}, bundletest.WithRateLimit(2, time.Second, 2),
		bundletest.WithClient("acme", "charges:List"), bundletest.WithClient("beta", "charges:List"),
		bundletest.WithClientRateLimit("acme", 1, time.Minute, 1))
	f.AddKey("apk-default", []string{"charges:List"})
	return f
}

func newClock() *fakeClock {
	return &fakeClock{now: time.Now().Truncate(time.Second)}
}

func expect429(t *testing.T, r sidecartest.Response, q, w, retry string) {
	t.Helper()
	if r.Status != http.StatusTooManyRequests {
		t.Fatalf("want 429, got %d %s", r.Status, r.Body)
	}
	want := map[string]string{
		"Retry-After":      retry,
		"RateLimit-Policy": `"keygate";q=` + q + `;w=` + w,
		"RateLimit":        `"keygate";r=0;t=` + retry,
	}
	for k, v := range want {
		if got := r.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestRateLimitIsExactAtTheBoundary(t *testing.T) {
	f := limitedFixture()
	clock := newClock()
	h := newHarness(t, f, func(o *Options) { o.Now = clock.Now })
	slow := sidecartest.Basic("apk-slow", f.Secrets["apk-slow"])
	for i := 0; i < 2; i++ {
		if r := h.Do("GET", "/charges", "", "Authorization", slow); r.Status != http.StatusOK {
			t.Fatalf("request %d within the burst: %d %s", i+1, r.Status, r.Body)
		}
	}
	r := h.Do("GET", "/charges", "", "Authorization", slow)
	expect429(t, r, "2", "1", "1")
	if b := r.JSON(t); b["error"] != "too_many_requests" || b["message"] != "rate limit exceeded" {
		t.Fatalf("429 body: %s", r.Body)
	}
	clock.Add(499 * time.Millisecond)
	expect429(t, h.Do("GET", "/charges", "", "Authorization", slow), "2", "1", "1")
	clock.Add(time.Millisecond)
	if r := h.Do("GET", "/charges", "", "Authorization", slow); r.Status != http.StatusOK {
		t.Fatalf("at the refill: %d %s", r.Status, r.Body)
	}
	expect429(t, h.Do("GET", "/charges", "", "Authorization", slow), "2", "1", "1")

	// The policy's default (100/s) applies to a key without its own limit.
	def := sidecartest.Basic("apk-default", f.Secrets["apk-default"])
	for i := 0; i < 100; i++ {
		if r := h.Do("GET", "/charges", "", "Authorization", def); r.Status != http.StatusOK {
			t.Fatalf("request %d of the policy's burst: %d %s", i+1, r.Status, r.Body)
		}
	}
	expect429(t, h.Do("GET", "/charges", "", "Authorization", def), "100", "1", "1")
	if got := counterValue(t, h.srv.opts.Metrics.limited.WithLabelValues("test-api")); got != 4 {
		t.Fatalf("keygate_sidecar_ratelimited_total = %v, want 4", got)
	}
}

func TestRateLimitBucketsOfClientsAndTokens(t *testing.T) {
	f := limitedFixture()
	clock := newClock()
	h := newHarness(t, f, func(o *Options) { o.Now = clock.Now })
	slow := sidecartest.Basic("apk-slow", f.Secrets["apk-slow"])

	// Token requests count in their own bucket: two tokens, then 429 in the
	// token endpoint's shape, while the request bucket is untouched.
	tok := h.Token("apk-slow")
	h.Token("apk-slow")
	r := h.Do("POST", "/api/token", `{"apiKey":"apk-slow","secret":"`+f.Secrets["apk-slow"]+`"}`, "Content-Type", "application/json")
	expect429(t, r, "2", "1", "1")
	if b := r.JSON(t); b["error"] != "slow_down" {
		t.Fatalf("token endpoint 429 body: %s", r.Body)
	}
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok); r.Status != http.StatusOK {
		t.Fatalf("requests spent by token minting: %d %s", r.Status, r.Body)
	}

	// Client "acme" has 1/min of its own; "beta" shares the key's bucket.
	clock.Add(time.Second)
	acmeTok := clientToken(t, h, tok, "acme")
	clock.Add(time.Second)
	betaTok := clientToken(t, h, tok, "beta")
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+acmeTok); r.Status != http.StatusOK {
		t.Fatalf("acme's first request: %d %s", r.Status, r.Body)
	}
	expect429(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+acmeTok), "1", "60", "60")
	// The key's own bucket (2, burst 2, refilled by now) is apart from acme's.
	for i := 0; i < 2; i++ {
		if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+betaTok); r.Status != http.StatusOK {
			t.Fatalf("beta request %d: %d %s", i+1, r.Status, r.Body)
		}
	}
	expect429(t, h.Do("GET", "/charges", "", "Authorization", slow), "2", "1", "1")
}

func clientToken(t *testing.T, h *harness, platform, client string) string {
	t.Helper()
	r := h.Do("POST", "/api/token", `{"clientKey":"`+client+`"}`, "Content-Type", "application/json", "Authorization", "Bearer "+platform)
	if r.Status != http.StatusCreated {
		t.Fatalf("client token for %s: %d %s", client, r.Status, r.Body)
	}
	return r.JSON(t)["access_token"].(string)
}

func TestRateLimitUnderAudit(t *testing.T) {
	f := limitedFixture()
	f.Bundle.Policy.Enforcement = bundle.EnforcementAudit
	clock := newClock()
	h := newHarness(t, f, func(o *Options) { o.Now = clock.Now })
	slow := sidecartest.Basic("apk-slow", f.Secrets["apk-slow"])
	for i, want := range []string{"allow", "allow", "deny; reason=ratelimited"} {
		seen := h.Do("GET", "/charges", "", append(append([]string{}, spoofed...), "Authorization", slow)...).Seen(t)
		if got := seen.Headers[HeaderDecision]; len(got) != 1 || got[0] != want {
			t.Fatalf("request %d: %s = %q, want %q", i+1, HeaderDecision, got, want)
		}
		if got := seen.Headers[HeaderKeyID]; len(got) != 1 || got[0] != "apk-slow" {
			t.Fatalf("request %d: %s = %q", i+1, HeaderKeyID, got)
		}
	}
}

func TestRateLimitKeyLabelsAreCapped(t *testing.T) {
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.DefaultAction = "Authenticated"
	f.Bundle.Policy.RateLimit = &bundle.RateLimit{Requests: 1, PerMillis: 60000, Burst: 1}
	ids := []string{"apk-a", "apk-b", "apk-c"}
	for _, id := range ids {
		f.AddKey(id, nil)
	}
	clock := newClock()
	h := newHarness(t, f, func(o *Options) { o.Now = clock.Now })
	h.srv.opts.Metrics.EnableKeyLabels(2)
	for _, id := range ids {
		for i := 0; i < 2; i++ {
			h.Do("GET", "/x", "", "Authorization", sidecartest.Basic(id, f.Secrets[id]))
		}
	}
	by := h.srv.opts.Metrics.byKey
	for label, want := range map[string]float64{"apk-a": 1, "apk-b": 1, "other": 1, "apk-c": 0} {
		if got := counterValue(t, by.WithLabelValues("test-api", label)); got != want {
			t.Errorf("keygate_sidecar_ratelimited_by_key_total{key_id=%q} = %v, want %v", label, got, want)
		}
	}
}
