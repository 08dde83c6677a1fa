// Package sidecar benchmarks the keygate sidecar over loopback against the
// upstream directly and a plain httputil.ReverseProxy, measures token
// issuance in process and over HTTP, and the sidecar's RSS. It prints
// figures (b.ReportMetric) and asserts no timings.
package sidecar

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/server"
	"github.com/keygate-dev/keygate/sidecar/token"
	"github.com/keygate-dev/keygate/sidecar/usage"
	"github.com/keygate-dev/keygate/test/logaddr"
)

// workers is the number of concurrent client connections of the load.
const workers = 8

// requests is the bounded load of one proxy measurement (per side). A run
// takes seconds, so -benchtime=1s runs each once.
const requests = 20000

func upstream(b *testing.B) *httptest.Server {
	body := []byte(`{"ok":true}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(up.Close)
	return up
}

func fixture(alg string) *bundletest.Fixture {
	f := bundletest.New(alg)
	f.Bundle.Policy.APIKeyHeader = "X-Api-Key"
	f.Bundle.Policy.Rules = []bundle.Rule{{Methods: []string{"GET"}, Paths: []string{"/charges", "/charges/*"}, Permission: "charges:List"}}
	for i := 0; i < 40; i++ {
		f.AddKey(fmt.Sprintf("apk-%02d", i), []string{"charges:List", "reports:All"})
	}
	return f
}

// sidecarServer serves the sidecar as its plain main listener does (the fast
// path in front of net/http) on loopback; URL is its base URL.
func sidecarServer(b *testing.B, f *bundletest.Fixture, up *httptest.Server, opts ...func(*server.Options)) frontURL {
	store := &config.Store{}
	if _, err := store.Update(f.JSON()); err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse(up.URL)
	o := server.Options{Store: store, Upstream: u, Log: slog.New(slog.DiscardHandler), Metrics: server.NewMetrics(store)}
	for _, opt := range opts {
		opt(&o)
	}
	srv := server.New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	fast := srv.NewFastServer(server.NewHTTPServer(srv.Handler(), server.DefaultTimeouts), server.DefaultTimeouts)
	go func() { _ = fast.Serve(ln) }()
	b.Cleanup(func() { _ = fast.Close() })
	return frontURL{URL: "http://" + ln.Addr().String()}
}

// frontURL is where a sidecar under benchmark listens.
type frontURL struct{ URL string }

func client() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers * 2, MaxIdleConns: workers * 2, DisableCompression: true}}
}

// load sends n GET requests from workers goroutines and returns req/s and
// latency percentiles.
func load(b *testing.B, target string, n int, header ...string) (rps float64, p50, p99 time.Duration) {
	lat, el := loadRaw(b, target, n, header...)
	slices.Sort(lat)
	return float64(n) / el.Seconds(), lat[n/2], lat[n*99/100]
}

// loadRaw sends n requests and returns their latencies and the elapsed time.
func loadRaw(b *testing.B, target string, n int, header ...string) ([]time.Duration, time.Duration) {
	c := client()
	defer c.CloseIdleConnections()
	return loadWith(b, c, target, n, header...)
}

// loadWith sends n requests with c from workers goroutines.
func loadWith(b *testing.B, c *http.Client, target string, n int, header ...string) ([]time.Duration, time.Duration) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", target, nil)
			for i := 0; i+1 < len(header); i += 2 {
				req.Header.Set(header[i], header[i+1])
			}
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				t0 := time.Now()
				resp, err := c.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d requests failed", f, n)
	}
	return lat, el
}

// chunk is the size of one interleaved round of the A/B comparison.
const chunk = 1000

// compare loads the plain proxy and the target in alternating rounds of
// chunk requests (n each in all), so that noise from other processes hits
// both alike, and reports both and their ratios.
func compare(b *testing.B, plain, target string, n int, header ...string) {
	var pl, tl []time.Duration
	var pe, te time.Duration
	for done := 0; done < n; done += chunk {
		k := min(chunk, n-done)
		l, e := loadRaw(b, plain, k)
		pl, pe = append(pl, l...), pe+e
		l, e = loadRaw(b, target, k, header...)
		tl, te = append(tl, l...), te+e
	}
	slices.Sort(pl)
	slices.Sort(tl)
	prps, trps := float64(len(pl))/pe.Seconds(), float64(len(tl))/te.Seconds()
	b.ReportMetric(trps, "req/s")
	b.ReportMetric(float64(tl[len(tl)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(tl[len(tl)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(prps, "plain-req/s")
	b.ReportMetric(float64(pl[len(pl)*99/100].Microseconds()), "plain-p99-µs")
	b.ReportMetric(trps/prps, "x-plain-proxy")
	b.ReportMetric(float64((tl[len(tl)/2] - pl[len(pl)/2]).Microseconds()), "p50-added-µs")
	b.ReportMetric(float64((tl[len(tl)*99/100] - pl[len(pl)*99/100]).Microseconds()), "p99-added-µs")
}

func basicAuth(u, p string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p))
}

// BenchmarkProxy measures a small GET through each path. Each run sends
// b.N requests (bounded by -benchtime).
func BenchmarkProxy(b *testing.B) {
	up := upstream(b)
	u, _ := url.Parse(up.URL)
	// The baseline gets the same pooled transport and copy buffers as the
	// sidecar, so the ratio measures authentication and authorisation only.
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u); pr.SetXForwarded() },
		Transport: server.NewTransport(), BufferPool: &server.BufferPool{}}
	plain := httptest.NewServer(rp)
	b.Cleanup(plain.Close)
	plainURL := plain.URL + "/charges"
	run := func(name, target string, header ...string) {
		b.Run(name, func(b *testing.B) {
			n := requests
			load(b, target, 2000, header...) // warm connections and caches
			load(b, plainURL, 2000)
			b.ResetTimer()
			compare(b, plainURL, target, n, header...)
		})
	}
	run("upstream-direct", up.URL+"/charges")
	f := fixture(bundle.AlgEdDSA)
	front := sidecarServer(b, f, up)
	run("sidecar-basic", front.URL+"/charges", "Authorization", basicAuth("apk-07", f.Secrets["apk-07"]))
	run("sidecar-apikey-header", front.URL+"/charges", "X-Api-Key", "apk-07:"+f.Secrets["apk-07"])
	// The same with a rate limit never reached (every request spends from the
	// bucket), usage recording and Audit mode: the cost of issue 13's steps.
	fl := fixture(bundle.AlgEdDSA)
	fl.Bundle.Policy.RateLimit = &bundle.RateLimit{Requests: 1 << 40, PerMillis: 1000, Burst: 1 << 40}
	fl.Bundle.Policy.Enforcement = bundle.EnforcementAudit
	frontL := sidecarServer(b, fl, up, func(o *server.Options) { o.Usage = usage.NewRecorder() })
	run("sidecar-basic-ratelimit-usage-audit", frontL.URL+"/charges", "Authorization", basicAuth("apk-07", fl.Secrets["apk-07"]))
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgES256, bundle.AlgRS256, bundle.AlgHS256} {
		f := fixture(alg)
		front := sidecarServer(b, f, up)
		tok := issueHTTP(b, front.URL, "apk-07", f.Secrets["apk-07"])
		run("sidecar-bearer-"+alg, front.URL+"/charges", "Authorization", "Bearer "+tok)
	}
}

func issueHTTP(b *testing.B, base, key, secret string) string {
	resp, err := http.Post(base+"/api/token", "application/json", strings.NewReader(`{"apiKey":"`+key+`","secret":"`+secret+`"}`))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 201 {
		b.Fatalf("token: %d %v", resp.StatusCode, err)
	}
	return out.AccessToken
}

// BenchmarkIssue is in-process token issuance on one goroutine (one core).
func BenchmarkIssue(b *testing.B) {
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgES256, bundle.AlgRS256, bundle.AlgHS256} {
		b.Run(alg, func(b *testing.B) {
			f := fixture(alg)
			rt, err := config.Compile(f.JSON())
			if err != nil {
				b.Fatal(err)
			}
			spec := token.Spec{Subject: "apk-07", Perms: []string{"charges:List", "reports:All"}, TTL: time.Hour}
			now := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, _, err := rt.Keyset.Issue(spec, now); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tokens/s")
		})
	}
}

// BenchmarkEd25519Sign is the bare signature, the floor of EdDSA issuance
// on this machine (to read BenchmarkIssue/EdDSA against).
func BenchmarkEd25519Sign(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(nil)
	msg := make([]byte, 300)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ed25519.Sign(priv, msg)
	}
}

// BenchmarkVerify is a full (uncached) verification per algorithm.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgES256, bundle.AlgRS256, bundle.AlgHS256} {
		b.Run(alg, func(b *testing.B) {
			rt, err := config.Compile(fixture(alg).JSON())
			if err != nil {
				b.Fatal(err)
			}
			raw, _, _ := rt.Keyset.Issue(token.Spec{Subject: "apk-07", TTL: time.Hour}, time.Now())
			now := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := rt.Keyset.Verify(raw, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIssueHTTP is POST /api/token over loopback, sequential.
func BenchmarkIssueHTTP(b *testing.B) {
	up := upstream(b)
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgHS256} {
		b.Run(alg, func(b *testing.B) {
			f := fixture(alg)
			front := sidecarServer(b, f, up)
			body := `{"apiKey":"apk-07","secret":"` + f.Secrets["apk-07"] + `"}`
			c := client()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				resp, err := c.Post(front.URL+"/api/token", "application/json", strings.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != 201 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tokens/s")
		})
	}
}

// BenchmarkRSS runs the sidecar binary in file mode and reports its resident
// memory idle and after a bounded load.
func BenchmarkRSS(b *testing.B) {
	bin := buildSidecar(b)
	f := fixture(bundle.AlgEdDSA)
	up := upstream(b)
	started := time.Now()
	sc := startSidecar(b, bin, f, up)
	b.ReportMetric(float64(time.Since(started).Milliseconds()), "startup-ms")
	time.Sleep(200 * time.Millisecond)
	b.ReportMetric(rssMiB(b, sc.pid), "idle-RSS-MiB")
	target := "http://" + sc.main + "/charges"
	load(b, target, requests, "Authorization", basicAuth("apk-07", f.Secrets["apk-07"]))
	b.ReportMetric(rssMiB(b, sc.pid), "load-RSS-MiB")
}

// buildSidecar builds cmd/sidecar into a temporary directory.
func buildSidecar(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "sidecar")
	build := exec.Command("go", "build", "-o", bin, "github.com/keygate-dev/keygate/cmd/sidecar")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		b.Fatal(err)
	}
	return bin
}

// sidecarProcess is a running sidecar binary.
type sidecarProcess struct {
	main, admin string
	pid         int
}

// startSidecar runs the binary in file mode with f's bundle in front of up,
// with extra flags, on port 0: the bound addresses come from its "Started
// sidecar" log line (info level; allowed requests are logged at debug only).
// It returns once /readyz answers 200; the process is stopped at cleanup.
func startSidecar(b *testing.B, bin string, f *bundletest.Fixture, up *httptest.Server, flags ...string) sidecarProcess {
	dir := b.TempDir()
	bf := filepath.Join(dir, "bundle.json")
	if err := f.WriteFile(bf); err != nil {
		b.Fatal(err)
	}
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	logPath := filepath.Join(dir, "sidecar.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	args := append([]string{"--bundle-file", bf, "--upstream-port", strconv.Itoa(upPort), "--port", "0",
		"--admin-port", "0", "--bind-address", "127.0.0.1", "--log-level", "info"}, flags...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logFile
	started := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait(); _ = logFile.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mainAddr, admin, err := logaddr.Sidecar(ctx, logPath, nil)
	if err != nil {
		b.Fatal(err)
	}
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(started) > 10*time.Second {
			b.Fatal("sidecar not ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return sidecarProcess{main: mainAddr, admin: admin, pid: cmd.Process.Pid}
}

func rssMiB(b *testing.B, pid int) float64 {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = fh.Close() }()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
