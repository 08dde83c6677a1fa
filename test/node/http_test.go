//go:build e2enode

package node

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// httpClient speaks to pod and Service addresses on the node's bridge only.
var httpClient = &http.Client{Timeout: 5 * time.Second}

// response is one answer of a sidecar (or the upstream behind it).
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
	err    error
}

// call sends one request to base (http://addr) and decodes a JSON body.
func call(base, method, path, body string, headers ...string) response {
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		return response{err: err}
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return response{err: err}
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(raw), err: err}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

func get(base, path, authorization string) response {
	return call(base, http.MethodGet, path, "", "Authorization", authorization)
}

// status is the status of a GET, 0 when the request failed.
func status(base, path, authorization string) int {
	return get(base, path, authorization).status
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// token asks base's token endpoint for a token for creds; "" when refused.
func token(base string, creds credentials) (string, response) {
	r := call(base, http.MethodPost, "/api/token", `{"apiKey":"`+creds.key+`","secret":"`+creds.secret+`"}`,
		"Content-Type", "application/json")
	tok, _ := r.body["access_token"].(string)
	return tok, r
}

// revoke revokes tok at base (RFC 7009), authenticated as creds.
func revoke(base, tok string, creds credentials) response {
	return call(base, http.MethodPost, "/oauth/revoke", url.Values{"token": {tok}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded", "Authorization", creds.authorization)
}

// identity is the X-Keygate-* headers the demo upstream saw.
func identity(r response) map[string]any {
	id, _ := r.body["identity"].(map[string]any)
	return id
}

// load sends GETs of path with authorization to the targets in turn until
// stop is closed, at most max requests or for at most limit; it counts the
// answers that are not 200.
type load struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	failures     []string
	done         chan struct{}
}

func startLoad(targets []string, path, authorization string, stop <-chan struct{}, maxRequests int, limit time.Duration) *load {
	l := &load{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		deadline := time.Now().Add(limit)
		for i := 0; i < maxRequests && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			r := get(targets[i%len(targets)], path, authorization)
			l.sent.Add(1)
			if r.status != http.StatusOK {
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.failures) < 5 {
					l.failures = append(l.failures, targets[i%len(targets)]+": "+r.raw+errString(r.err))
				}
				l.mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return l
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

// percentile of the sorted durations, p in [0, 100].
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}
