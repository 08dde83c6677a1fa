package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/servingcert/certtest"
)

// TestTLSListener runs the sidecar in file mode with --tls-cert-file and
// --tls-key-file: TLS (HTTP/1.1 and h2) through the chain, plain HTTP refused,
// a bad pair on disk shown in /readyz and the metric while the last good pair
// keeps serving.
func TestTLSListener(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "upstream saw "+r.Header.Get("X-Keygate-Key-Id"))
	}))
	t.Cleanup(up.Close)
	upPort := up.Listener.Addr().(*net.TCPAddr).Port

	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Paths: []string{"/x"}, Permission: "x:Read"}}
	f.AddKey("apk-tls", []string{"x:Read"})
	dir := t.TempDir()
	bundleFile := filepath.Join(dir, "bundle.json")
	if err := os.WriteFile(bundleFile, f.JSON(), 0o600); err != nil {
		t.Fatal(err)
	}
	authority := certtest.NewCA(t)
	c1, k1 := authority.Issue(t, 1)
	certtest.Install(t, dir, c1, k1)

	in := runInstance(t, "sidecar", "--bundle-file", bundleFile, "--upstream-port", fmt.Sprint(upPort),
		"--port", "0", "--admin-port", "0", "--bind-address", "127.0.0.1", "--drain-timeout", "1s", "--log-level", "error",
		"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key"))
	mainAddr, adminGet := in.mainAddr(), in.adminGet

	for _, h2 := range []bool{false, true} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: authority.Pool}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", "https://"+mainAddr+"/x", nil)
		req.SetBasicAuth("apk-tls", f.Secrets["apk-tls"])
		req.Header.Set("X-Keygate-Key-Id", "forged")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		wantProto := map[bool]int{false: 1, true: 2}[h2]
		if resp.StatusCode != 200 || string(b) != "upstream saw apk-tls" || resp.ProtoMajor != wantProto {
			t.Fatalf("h2=%v: %s %d %q", h2, resp.Proto, resp.StatusCode, b)
		}
		// Refusals take the same shape over TLS.
		req, _ = http.NewRequest("GET", "https://"+mainAddr+"/x", nil)
		resp, err = client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(string(b), "authentication required") {
			t.Fatalf("h2=%v: unauthenticated got %d %q", h2, resp.StatusCode, b)
		}
		tr.CloseIdleConnections()
	}
	// Plain HTTP to the TLS port is not served.
	if resp, err := http.Get("http://" + mainAddr + "/x"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(b), "upstream") {
			t.Fatalf("plain HTTP on the TLS port: %d %q", resp.StatusCode, b)
		}
	}

	// A key that does not match the certificate: refused, shown, the old pair serves.
	c2, _ := authority.Issue(t, 2)
	_, k3 := authority.Issue(t, 3)
	certtest.Install(t, dir, c2, k3)
	eventually(t, 30*time.Second, "the refused pair in /readyz and the metric", func() bool {
		return strings.Contains(adminGet("/readyz"), "TLS key pair on disk refused") &&
			strings.Contains(adminGet("/metrics"), "keygate_sidecar_tls_keypair_refused 1")
	})
	conn, err := tls.Dial("tcp", mainAddr, &tls.Config{RootCAs: authority.Pool})
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64(); got != 1 {
		t.Fatalf("serving serial %d, want the last good 1", got)
	}
	_ = conn.Close()
}

func TestUpstreamProtocolFlag(t *testing.T) {
	err := run(context.Background(), []string{"--bundle-file", "bundle.json", "--upstream-port", "8080", "--upstream-protocol", "grpc"}, nil)
	if err == nil || !strings.Contains(err.Error(), `--upstream-protocol "grpc": use http1 or h2c`) {
		t.Fatalf("run with a bad --upstream-protocol: %v", err)
	}
	err = run(context.Background(), []string{"--bundle-file", "bundle.json", "--upstream-port", "8080", "--tls-cert-file", "tls.crt"}, nil)
	if err == nil || !strings.Contains(err.Error(), "--tls-cert-file and --tls-key-file go together") {
		t.Fatalf("run with a certificate and no key: %v", err)
	}
}

// TestH2CPriorKnowledge: with --h2c the plain listener serves HTTP/2 with
// prior knowledge through the chain; without it, it does not.
func TestH2CPriorKnowledge(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "upstream saw "+r.Header.Get("X-Keygate-Key-Id"))
	}))
	t.Cleanup(up.Close)
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Paths: []string{"/x"}, Permission: "x:Read"}}
	f.AddKey("apk-h2c", []string{"x:Read"})
	bundleFile := filepath.Join(t.TempDir(), "bundle.json")
	if err := os.WriteFile(bundleFile, f.JSON(), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, on := range []bool{true, false} {
		args := []string{"--bundle-file", bundleFile, "--upstream-port", fmt.Sprint(up.Listener.Addr().(*net.TCPAddr).Port),
			"--port", "0", "--admin-port", "0", "--bind-address", "127.0.0.1", "--drain-timeout", "1s", "--log-level", "error"}
		if on {
			args = append(args, "--h2c")
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		addrs := make(chan string, 1)
		go func() { done <- run(ctx, args, func(main, _ net.Addr) { addrs <- main.String() }) }()
		var addr string
		select {
		case addr = <-addrs:
		case err := <-done:
			cancel()
			t.Fatalf("run: %v", err)
		}
		tr := &http.Transport{Protocols: &http.Protocols{}}
		tr.Protocols.SetUnencryptedHTTP2(true)
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		var status int
		var body string
		var proto int
		eventually(t, 20*time.Second, "an answer over h2c", func() bool {
			req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
			req.SetBasicAuth("apk-h2c", f.Secrets["apk-h2c"])
			resp, err := client.Do(req)
			if err != nil {
				status = 0
				return !on // without --h2c the prior-knowledge preface is refused
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			status, body, proto = resp.StatusCode, string(b), resp.ProtoMajor
			return status == 200
		})
		if on && (status != 200 || proto != 2 || body != "upstream saw apk-h2c") {
			t.Fatalf("--h2c: %d HTTP/%d %q", status, proto, body)
		}
		if !on && status != 0 {
			t.Fatalf("h2c prior knowledge served without --h2c: %d", status)
		}
		tr.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run: %v", err)
		}
	}
}
