package sidecar

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/servingcert/certtest"
)

// listenerRounds × listenerChunk requests per listener, interleaved.
const (
	listenerRounds = 10
	listenerChunk  = 2000
)

// listenerRow is one listener under load.
type listenerRow struct {
	name   string
	proc   sidecarProcess
	url    string
	client *http.Client
	proto  int // HTTP major version the row must speak
	ticks  float64
	reqs   int
	el     time.Duration
	lat    []time.Duration
}

// BenchmarkListeners compares the sidecar's listeners with the same chain
// behind them (Basic authentication, a rule, the proxy): plain HTTP/1.1 (the
// reference), TLS with HTTP/1.1, TLS with h2 (ALPN) and h2c with prior
// knowledge (--h2c). Each listener is its own sidecar process, so its CPU
// (utime+stime from /proc, clock ticks of 10 ms) is its alone. Rounds of
// listenerChunk requests alternate between the rows so that noise from
// other processes hits all alike. Connections are kept alive (8 for
// HTTP/1.1; h2 and h2c multiplex the 8 workers over one connection, as Go's
// client does), so TLS handshakes are amortised: the figures are the
// steady-state cost of encryption and framing.
func BenchmarkListeners(b *testing.B) {
	bin := buildSidecar(b)
	f := fixture(bundle.AlgEdDSA)
	up := upstream(b)
	dir := b.TempDir()
	ca := certtest.NewCA(b)
	c, k := ca.Issue(b, 1)
	certtest.Install(b, dir, c, k)
	plain := startSidecar(b, bin, f, up)
	withTLS := startSidecar(b, bin, f, up, "--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key"))
	h2c := startSidecar(b, bin, f, up, "--h2c")

	tlsConf := func() *tls.Config { return &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12} }
	http1 := &http.Transport{MaxIdleConnsPerHost: workers * 2, DisableCompression: true, TLSClientConfig: tlsConf(),
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	plain1 := &http.Transport{MaxIdleConnsPerHost: workers * 2, DisableCompression: true}
	h2 := &http.Transport{MaxIdleConnsPerHost: workers * 2, DisableCompression: true, TLSClientConfig: tlsConf(), ForceAttemptHTTP2: true}
	h2cT := &http.Transport{MaxIdleConnsPerHost: workers * 2, DisableCompression: true, Protocols: &http.Protocols{}}
	h2cT.Protocols.SetUnencryptedHTTP2(true)
	rows := []*listenerRow{
		{name: "plain-http1", proc: plain, url: "http://" + plain.main + "/charges", client: &http.Client{Transport: plain1}, proto: 1},
		{name: "tls-http1", proc: withTLS, url: "https://" + withTLS.main + "/charges", client: &http.Client{Transport: http1}, proto: 1},
		{name: "tls-h2", proc: withTLS, url: "https://" + withTLS.main + "/charges", client: &http.Client{Transport: h2}, proto: 2},
		{name: "h2c", proc: h2c, url: "http://" + h2c.main + "/charges", client: &http.Client{Transport: h2cT}, proto: 2},
	}
	b.Cleanup(func() {
		for _, r := range rows {
			r.client.CloseIdleConnections()
		}
	})
	auth := []string{"Authorization", basicAuth("apk-07", f.Secrets["apk-07"])}
	for _, r := range rows {
		req, _ := http.NewRequest("GET", r.url, nil)
		req.Header.Set(auth[0], auth[1])
		resp, err := r.client.Do(req)
		if err != nil {
			b.Fatalf("%s: %v", r.name, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != r.proto {
			b.Fatalf("%s: %d over %s, want 200 over HTTP/%d", r.name, resp.StatusCode, resp.Proto, r.proto)
		}
		loadWith(b, r.client, r.url, listenerChunk, auth...) // warm connections and caches
	}

	b.ResetTimer()
	for round := 0; round < listenerRounds; round++ {
		for _, r := range rows {
			before := cpuTicks(b, r.proc.pid)
			lat, el := loadWith(b, r.client, r.url, listenerChunk, auth...)
			r.ticks += cpuTicks(b, r.proc.pid) - before
			r.reqs += listenerChunk
			r.el += el
			r.lat = append(r.lat, lat...)
		}
	}
	b.StopTimer()

	ref := rows[0]
	refRPS, refCPU := float64(ref.reqs)/ref.el.Seconds(), ref.ticks*10000/float64(ref.reqs)
	var out strings.Builder
	fmt.Fprintf(&out, "\n%-12s %10s %8s %9s %9s %12s %9s\n", "listener", "req/s", "×plain", "p50 µs", "p99 µs", "CPU µs/req", "CPU×plain")
	for _, r := range rows {
		slices.Sort(r.lat)
		rps := float64(r.reqs) / r.el.Seconds()
		cpu := r.ticks * 10000 / float64(r.reqs) // 1 tick = 10 ms = 10000 µs
		fmt.Fprintf(&out, "%-12s %10.0f %8.2f %9d %9d %12.1f %9.2f\n", r.name, rps, rps/refRPS,
			r.lat[len(r.lat)/2].Microseconds(), r.lat[len(r.lat)*99/100].Microseconds(), cpu, cpu/refCPU)
		b.ReportMetric(rps, r.name+"-req/s")
		b.ReportMetric(cpu, r.name+"-cpu-µs/req")
	}
	fmt.Fprintf(&out, "(%d rounds of %d requests per listener, interleaved, %d workers; CPU = utime+stime of the sidecar process / requests)\n",
		listenerRounds, listenerChunk, workers)
	_, _ = os.Stdout.WriteString(out.String())
}

// cpuTicks is utime+stime of pid (clock ticks, 100/s).
func cpuTicks(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) in parentheses:
	// state is field 3, utime 14, stime 15.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		b.Fatalf("short /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseFloat(fields[11], 64)
	st, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %v %v", pid, err1, err2)
	}
	return u + st
}
