//go:build peers

// Package peers benchmarks keygate against peer proxies in one interleaved
// run over loopback: the upstream directly, HAProxy (Basic; JWT HS256 + exp +
// source ACL), nginx (Basic), a plain Go httputil.ReverseProxy and the keygate
// sidecar binary (Basic, Bearer with one reused token, API-key header). wrk
// drives each for a bounded time per round; CPU per request is the proxy
// processes' utime+stime over the requests wrk completed. Run it with
// `make bench-peers` (hack/peers.sh installs HAProxy, nginx and wrk).
package peers

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/token"
)

// TestMain doubles as the plain Go reverse proxy contender (its own process,
// so its CPU can be measured): PEERS_ROLE=goproxy serves fd 3.
func TestMain(m *testing.M) {
	if os.Getenv("PEERS_ROLE") == "goproxy" {
		ln, err := net.FileListener(os.NewFile(3, "listener"))
		if err != nil {
			panic(err)
		}
		u, _ := url.Parse(os.Getenv("PEERS_UPSTREAM"))
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.Transport = &http.Transport{MaxIdleConnsPerHost: 1024, MaxIdleConns: 1024}
		panic(http.Serve(ln, rp))
	}
	os.Exit(m.Run())
}

type contender struct {
	name    string
	url     string
	headers []string
	// script is a wrk Lua script (the fresh-token row).
	script string
	pid    int
	// results, per round
	reqs      []float64
	cpuTicks  []float64
	p50, p99  []float64
	rps       []float64
	proxyless bool
	// rssMiB is the resident set of the proxy's processes right after this
	// contender's first run (later rounds carry the other rows' memory).
	rssMiB float64
}

func env(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func BenchmarkPeers(b *testing.B) {
	rounds, duration := env("PEERS_ROUNDS", 3), env("PEERS_SECONDS", 3)
	dir := b.TempDir()
	body := []byte(`{"ok":true}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	defer up.Close()
	upPort := up.Listener.Addr().(*net.TCPAddr).Port

	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.APIKeyHeader = "X-Api-Key"
	f.Bundle.Policy.Rules = []bundle.Rule{{Methods: []string{"GET"}, Paths: []string{"/bench"}, Permission: "bench:Read"}}
	secret := f.AddKey("apk-bench", []string{"bench:Read"})
	basic := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("apk-bench:"+secret))
	hsSecret := bundletest.Secret()

	haBasic, haJWT := listen(b), listen(b)
	ha := start(b, dir, "haproxy", []*net.TCPListener{haBasic, haJWT}, nil, "haproxy", "-db", "-f", write(b, dir, "haproxy.cfg", fmt.Sprintf(haproxyCfg, secret, hsSecret, upPort)))
	ngx := listen(b)
	ngxPort := ngx.Addr().(*net.TCPAddr).Port
	write(b, dir, "htpasswd", "apk-bench:{PLAIN}"+secret+"\n")
	ng := start(b, dir, "nginx", []*net.TCPListener{ngx}, []string{"NGINX=3;"}, "nginx", "-p", dir, "-c",
		write(b, dir, "nginx.conf", strings.ReplaceAll(fmt.Sprintf(nginxCfg, upPort, ngxPort), "DIR", dir)))
	gp := listen(b)
	self, _ := os.Executable()
	gop := start(b, dir, "goproxy", []*net.TCPListener{gp}, []string{"PEERS_ROLE=goproxy", "PEERS_UPSTREAM=" + up.URL}, self)
	kg, kgURL := startSidecar(b, dir, f, upPort)
	bearer := "Authorization: Bearer " + platformToken(b, kgURL, secret)
	fresh := freshTokens(b, dir, f, 40000)

	cs := []*contender{
		{name: "direct", url: up.URL + "/bench", proxyless: true},
		{name: "haproxy-basic", url: addrURL(haBasic), headers: []string{basic}, pid: ha},
		{name: "haproxy-jwt", url: addrURL(haJWT), headers: []string{"Authorization: Bearer " + hs256(hsSecret)}, pid: ha},
		{name: "nginx-basic", url: addrURL(ngx), headers: []string{basic}, pid: ng},
		{name: "go-reverseproxy", url: addrURL(gp), pid: gop},
		{name: "keygate-basic", url: kgURL + "/bench", headers: []string{basic}, pid: kg},
		{name: "keygate-bearer", url: kgURL + "/bench", headers: []string{bearer}, pid: kg},
		{name: "keygate-apikey", url: kgURL + "/bench", headers: []string{"X-Api-Key: apk-bench:" + secret}, pid: kg},
		{name: "keygate-bearer-new", url: kgURL + "/bench", script: fresh, pid: kg},
	}
	for _, c := range cs {
		if c.script == "" {
			waitOK(b, c)
		}
	}
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		for _, c := range cs {
			run(b, c, duration)
		}
	}
	b.StopTimer()
	report(b, cs)
}

const haproxyCfg = `global
	maxconn 4096
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	option http-keep-alive
userlist users
	user apk-bench insecure-password %s
frontend basic
	bind fd@3
	http-request auth realm keygate unless { http_auth(users) }
	default_backend up
frontend jwt
	bind fd@4
	http-request set-var(txn.bearer) http_auth_bearer
	http-request set-var(txn.now) date()
	http-request deny deny_status 401 unless { var(txn.bearer) -m found }
	http-request deny deny_status 401 unless { var(txn.bearer),jwt_header_query('$.alg') -m str HS256 }
	http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("HS256","%s") -m int 1 }
	http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
	http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
	http-request deny deny_status 403 unless { src 127.0.0.0/8 }
	default_backend up
backend up
	http-reuse always
	server s1 127.0.0.1:%d
`

const nginxCfg = `daemon off;
master_process on;
worker_processes 1;
user root;
pid DIR/nginx.pid;
error_log DIR/error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path DIR/body; proxy_temp_path DIR/proxy; fastcgi_temp_path DIR/fcgi;
	uwsgi_temp_path DIR/uwsgi; scgi_temp_path DIR/scgi;
	upstream up { server 127.0.0.1:%d; keepalive 64; }
	server {
		listen 127.0.0.1:%d;
		location / {
			auth_basic "keygate"; auth_basic_user_file DIR/htpasswd;
			proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
		}
	}
}
`

func listen(b *testing.B) *net.TCPListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	return ln.(*net.TCPListener)
}

func addrURL(ln *net.TCPListener) string { return "http://" + ln.Addr().String() + "/bench" }

func write(b *testing.B, dir, name, content string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

// start runs a proxy with lns as fds 3, 4, ... and returns its pid.
func start(b *testing.B, dir, name string, lns []*net.TCPListener, extraEnv []string, argv ...string) int {
	cmd := exec.Command(argv[0], argv[1:]...)
	for _, ln := range lns {
		fh, err := ln.File()
		if err != nil {
			b.Fatal(err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, fh)
	}
	cmd.Env = append(os.Environ(), extraEnv...)
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if b.Failed() {
			out, _ := os.ReadFile(logf.Name())
			b.Logf("%s output:\n%s", name, out)
		}
	})
	return cmd.Process.Pid
}

// startSidecar builds and runs the sidecar on port 0 and reads the address
// it reports.
func startSidecar(b *testing.B, dir string, f *bundletest.Fixture, upPort int) (int, string) {
	bin := filepath.Join(dir, "sidecar")
	build := exec.Command("go", "build", "-o", bin, "github.com/keygate-dev/keygate/cmd/sidecar")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		b.Fatal(err)
	}
	bf := filepath.Join(dir, "bundle.json")
	if err := f.WriteFile(bf); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "--bundle-file", bf, "--upstream-port", strconv.Itoa(upPort), "--port", "0",
		"--admin-port", "0", "--bind-address", "127.0.0.1", "--log-level", "info")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var line struct {
			Msg    string `json:"msg"`
			Listen string `json:"listen"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "Started sidecar" {
			go func() { _, _ = io.Copy(io.Discard, stderr) }()
			return cmd.Process.Pid, "http://" + line.Listen
		}
	}
	b.Fatal("the sidecar did not report its address")
	return 0, ""
}

func platformToken(b *testing.B, base, secret string) string {
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Post(base+"/api/token", "application/json", strings.NewReader(`{"apiKey":"apk-bench","secret":"`+secret+`"}`))
		if err == nil {
			var out struct {
				AccessToken string `json:"access_token"`
			}
			err = json.NewDecoder(resp.Body).Decode(&out)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusCreated && err == nil {
				return out.AccessToken
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("no token from the sidecar: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freshTokens mints n distinct EdDSA tokens for apk-bench (4× the sidecar's
// verified-token cache, so nearly every request is verified afresh) and
// writes a wrk script sending the next one with every request.
func freshTokens(b *testing.B, dir string, f *bundletest.Fixture, n int) string {
	rt, err := config.Compile(f.JSON())
	if err != nil {
		b.Fatal(err)
	}
	spec := token.Spec{Subject: "apk-bench", Perms: []string{"bench:Read"}, TTL: time.Hour}
	var list strings.Builder
	now := time.Now()
	for range n {
		tok, _, err := rt.Keyset.Issue(spec, now)
		if err != nil {
			b.Fatal(err)
		}
		list.WriteString(tok + "\n")
	}
	tokens := write(b, dir, "tokens.txt", list.String())
	return write(b, dir, "fresh.lua", `local toks = {}
for line in io.lines("`+tokens+`") do toks[#toks + 1] = line end
local i = math.random(#toks)
request = function()
	i = i % #toks + 1
	return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. toks[i]})
end
`)
}

// hs256 makes the JWT HAProxy checks: HS256, exp in an hour.
func hs256(secret string) string {
	enc := base64.RawURLEncoding.EncodeToString
	in := enc([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." +
		enc([]byte(fmt.Sprintf(`{"sub":"apk-bench","exp":%d}`, time.Now().Add(time.Hour).Unix())))
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(in))
	return in + "." + enc(m.Sum(nil))
}

// waitOK polls until the contender answers 200 with its credentials.
func waitOK(b *testing.B, c *contender) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest("GET", c.url, nil)
		for _, h := range c.headers {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			status := "no answer"
			if err == nil {
				status = resp.Status
			}
			b.Fatalf("%s not ready: %s %v", c.name, status, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	reqsRe = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m)`)
	rpsRe  = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	pctRe  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)`)
	non2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func run(b *testing.B, c *contender, seconds int) {
	args := []string{"-t2", "-c32", fmt.Sprintf("-d%ds", seconds), "--latency"}
	for _, h := range c.headers {
		args = append(args, "-H", h)
	}
	if c.script != "" {
		args = append(args, "-s", c.script)
	}
	args = append(args, c.url)
	before := cpuTicks(b, c.pid)
	out, err := exec.Command("wrk", args...).CombinedOutput()
	after := cpuTicks(b, c.pid)
	if c.rssMiB == 0 {
		c.rssMiB = procMiB(c.pid, "VmRSS:")
	}
	if err != nil {
		b.Fatalf("wrk %s: %v\n%s", c.name, err, out)
	}
	if m := non2xx.FindSubmatch(out); m != nil {
		b.Fatalf("%s: %s non-2xx answers\n%s", c.name, m[1], out)
	}
	m := reqsRe.FindSubmatch(out)
	r := rpsRe.FindSubmatch(out)
	if m == nil || r == nil {
		b.Fatalf("wrk output not understood:\n%s", out)
	}
	n, _ := strconv.ParseFloat(string(m[1]), 64)
	rps, _ := strconv.ParseFloat(string(r[1]), 64)
	c.reqs = append(c.reqs, n)
	c.rps = append(c.rps, rps)
	c.cpuTicks = append(c.cpuTicks, after-before)
	for _, p := range pctRe.FindAllSubmatch(out, -1) {
		v := dur(p[2], p[3])
		if string(p[1]) == "50" {
			c.p50 = append(c.p50, v)
		} else {
			c.p99 = append(c.p99, v)
		}
	}
}

func dur(v, unit []byte) float64 {
	f, _ := strconv.ParseFloat(string(v), 64)
	switch string(unit) {
	case "ms":
		return f * 1000
	case "s":
		return f * 1e6
	}
	return f // µs
}

// procTree lists pid and its children.
func procTree(pid int) []int {
	out := []int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(raw, ')')
		fields := strings.Fields(string(raw[i+2:]))
		if ppid, _ := strconv.Atoi(fields[1]); p == pid || ppid == pid {
			out = append(out, p)
		}
	}
	return out
}

// procMiB sums a /proc/<pid>/status memory field (VmRSS:, VmHWM:) over pid
// and its children, in MiB.
func procMiB(pid int, field string) float64 {
	if pid == 0 {
		return 0
	}
	kb := 0.0
	for _, p := range procTree(pid) {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, field); ok {
				f, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				kb += f
			}
		}
	}
	return kb / 1024
}

// cpuTicks is utime+stime of pid and its children (clock ticks, 100/s).
func cpuTicks(b *testing.B, pid int) float64 {
	if pid == 0 {
		return 0
	}
	total := 0.0
	for _, p := range procTree(pid) {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses.
		i := bytes.LastIndexByte(raw, ')')
		fields := strings.Fields(string(raw[i+2:]))
		ut, _ := strconv.ParseFloat(fields[11], 64)
		st, _ := strconv.ParseFloat(fields[12], 64)
		total += ut + st
	}
	return total
}

func sum(xs []float64) float64 {
	t := 0.0
	for _, x := range xs {
		t += x
	}
	return t
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func report(b *testing.B, cs []*contender) {
	cpu := map[string]float64{}
	for _, c := range cs {
		if !c.proxyless {
			cpu[c.name] = sum(c.cpuTicks) * 10000 / sum(c.reqs) // 1 tick = 10 ms
		}
	}
	ref := cpu["haproxy-jwt"]
	direct := median(cs[0].rps)
	var out strings.Builder
	fmt.Fprintf(&out, "\n%-18s %10s %8s %9s %9s %12s %10s %9s\n", "contender", "req/s", "×direct", "p50 µs", "p99 µs", "CPU µs/req", "×HAP-JWT", "RSS MiB")
	for _, c := range cs {
		cpuCol, ratio, rss := "-", "-", "-"
		if !c.proxyless {
			cpuCol = fmt.Sprintf("%.1f", cpu[c.name])
			ratio = fmt.Sprintf("%.2f", cpu[c.name]/ref)
			rss = fmt.Sprintf("%.1f", c.rssMiB)
		}
		fmt.Fprintf(&out, "%-18s %10.0f %8.2f %9.0f %9.0f %12s %10s %9s\n", c.name, median(c.rps), median(c.rps)/direct,
			median(c.p50), median(c.p99), cpuCol, ratio, rss)
	}
	fmt.Fprintf(&out, "(%d rounds interleaved, wrk -t2 -c32; CPU = utime+stime of the proxy processes / requests;\n"+
		"RSS MiB = VmRSS of the proxy's processes after the row's first run; keygate-bearer-new sends a token not seen before on nearly every request)\n", len(cs[0].rps))
	fmt.Print(out.String())
	b.ReportMetric(cpu["keygate-basic"], "keygate-basic-cpu-µs/req")
	b.ReportMetric(cpu["keygate-bearer"], "keygate-bearer-cpu-µs/req")
	b.ReportMetric(ref, "haproxy-jwt-cpu-µs/req")
	b.ReportMetric(cpu["keygate-basic"]/ref, "basic-x-haproxy-jwt")
	b.ReportMetric(cpu["keygate-bearer"]/ref, "bearer-x-haproxy-jwt")
	b.ReportMetric(cpu["keygate-bearer-new"], "keygate-bearer-new-cpu-µs/req")
	for _, c := range cs {
		if c.name == "keygate-basic" || c.name == "keygate-bearer-new" {
			b.ReportMetric(c.rssMiB, c.name+"-rss-MiB")
		}
	}
}
