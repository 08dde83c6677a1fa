package faults

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// load is a bounded load on the sidecars: every request carries a
// credential that is valid for the whole run, so any 401 or 403 is false.
type load struct {
	requests, ok, false401, false403, fivexx, failed atomic.Int64
	mu                                               sync.Mutex
	firstBad                                         string
}

// loadSpec bounds a load: at most requests in total and at most maxTime.
type loadSpec struct {
	targets  []*sidecar
	auths    []string // Authorization values, Basic and Bearer
	requests int
	maxTime  time.Duration
	workers  int
}

// startLoad runs spec in the background; the returned function stops it
// (if still running) and returns the counts.
func startLoad(spec loadSpec) (stop func() *load) {
	l := &load{}
	ctx, cancel := context.WithTimeout(context.Background(), spec.maxTime)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range spec.workers {
		// Distinct loopback source addresses, as distinct clients.
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+w%8))}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext:         (&net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 4,
		}}
		wg.Go(func() {
			defer hc.CloseIdleConnections()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= spec.requests {
					return
				}
				target := spec.targets[i%len(spec.targets)]
				auth := spec.auths[(i/len(spec.targets))%len(spec.auths)]
				l.one(ctx, hc, target, auth)
			}
		})
	}
	return func() *load { cancel(); wg.Wait(); return l }
}

func (l *load) one(ctx context.Context, hc *http.Client, target *sidecar, auth string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.base+"/charges", nil)
	if err != nil {
		return
	}
	req.Header.Set("Authorization", auth)
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			l.requests.Add(1)
			l.failed.Add(1)
			l.note(fmt.Sprintf("%s: %v", target.name, err))
		}
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_ = resp.Body.Close()
	l.requests.Add(1)
	switch {
	case resp.StatusCode == http.StatusOK:
		l.ok.Add(1)
		return
	case resp.StatusCode == http.StatusUnauthorized:
		l.false401.Add(1)
	case resp.StatusCode == http.StatusForbidden:
		l.false403.Add(1)
	case resp.StatusCode >= 500:
		l.fivexx.Add(1)
	default:
		l.failed.Add(1)
	}
	l.note(fmt.Sprintf("%s: %d %s", target.name, resp.StatusCode, strings.TrimSpace(string(body))))
}

func (l *load) note(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.firstBad == "" {
		l.firstBad = s
	}
}

func (l *load) String() string {
	return fmt.Sprintf("%d requests, %d false 401, %d false 403, %d 5xx, %d failed", l.requests.Load(), l.false401.Load(),
		l.false403.Load(), l.fivexx.Load(), l.failed.Load())
}

// check fails the test on any wrong answer.
func (l *load) check(t *testing.T) {
	t.Helper()
	if l.requests.Load() == 0 {
		t.Fatal("the load sent no request")
	}
	if l.false401.Load()+l.false403.Load()+l.fivexx.Load()+l.failed.Load() != 0 {
		t.Fatalf("wrong answers under load: %s; first: %s", l, l.firstBad)
	}
}

// call sends one request to a sidecar and decodes a JSON answer.
func call(base, method, path, body string, headers ...string) (int, map[string]any) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd) //nolint:noctx // bounded by the client's timeout
	if err != nil {
		return 0, nil
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := plainClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer func() { _ = resp.Body.Close() }()
	var m map[string]any
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&m)
	return resp.StatusCode, m
}

var plainClient = &http.Client{Timeout: 10 * time.Second}

func statusOf(url string) int {
	code, _ := call(url, http.MethodGet, "", "")
	return code
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// token gets a platform token for key at s.
func token(t *testing.T, s *sidecar, key, secret string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"apiKey": key, "secret": secret})
	code, m := call(s.base, http.MethodPost, "/api/token", string(body), "Content-Type", "application/json")
	tok, _ := m["access_token"].(string)
	if code != http.StatusCreated || tok == "" {
		t.Fatalf("token from %s: %d %v", s.name, code, m)
	}
	return tok
}

// revoke revokes tok at s and returns the status.
func revoke(s *sidecar, tok string) int {
	code, _ := call(s.base, http.MethodPost, "/api/token", `{"action":"revoke"}`, "Content-Type", "application/json", "Authorization", "Bearer "+tok)
	return code
}

// get is the status of GET /charges with auth at s.
func get(s *sidecar, auth string) int {
	code, _ := call(s.base, http.MethodGet, "/charges", "", "Authorization", auth)
	return code
}

// percentiles formats p50/p99/max of ds.
func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	r := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	return fmt.Sprintf("p50 %s p99 %s max %s (n=%d)", r(at(0.50)), r(at(0.99)), r(s[len(s)-1]), len(s))
}

// jtiOf reads a JWT's jti claim (only to name the token).
func jtiOf(t *testing.T, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	must(t, err)
	var claims struct {
		JTI string `json:"jti"`
	}
	must(t, json.Unmarshal(payload, &claims))
	return claims.JTI
}
