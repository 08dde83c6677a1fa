package main

import (
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
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
	"github.com/keygate-dev/keygate/sidecar/server"
	"github.com/keygate-dev/keygate/sidecar/servingcert/certtest"
)

// TestTLSClientCertificates runs the sidecar with --tls-client-ca-file: a
// client without a certificate of the CA fails the handshake, one with it is
// served and its verified subject reaches the workload (a forged copy never
// does); a bad CA file on disk shows in /readyz and the metric while the
// last good CA stays in force.
func TestTLSClientCertificates(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Join(r.Header.Values(server.HeaderClientCertSubject), "|"))
	}))
	t.Cleanup(up.Close)
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Paths: []string{"/x"}, Permission: "x:Read"}}
	f.AddKey("apk-mtls", []string{"x:Read"})
	dir := t.TempDir()
	bundleFile := filepath.Join(dir, "bundle.json")
	if err := os.WriteFile(bundleFile, f.JSON(), 0o600); err != nil {
		t.Fatal(err)
	}
	serving, clients := certtest.NewCA(t), certtest.NewCA(t)
	c, k := serving.Issue(t, 1)
	certtest.Install(t, dir, c, k)
	caFile := filepath.Join(dir, "ca.crt")
	certtest.InstallFile(t, caFile, clients.PEM())

	in := runInstance(t, "sidecar", "--bundle-file", bundleFile, "--upstream-port", fmt.Sprint(up.Listener.Addr().(*net.TCPAddr).Port),
		"--port", "0", "--admin-port", "0", "--bind-address", "127.0.0.1", "--drain-timeout", "1s", "--log-level", "error",
		"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key"), "--tls-client-ca-file", caFile)
	mainAddr, adminGet := in.mainAddr(), in.adminGet

	get := func(h2 bool, certs ...tls.Certificate) (int, string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serving.Pool, Certificates: certs}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+mainAddr+"/x", nil)
		req.SetBasicAuth("apk-mtls", f.Secrets["apk-mtls"])
		req.Header.Set(server.HeaderClientCertSubject, "CN=forged")
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0, "", err
		}
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	billing := clients.IssueClient(t, 5, pkix.Name{CommonName: "billing", Organization: []string{"payments"}})
	for _, h2 := range []bool{false, true} {
		if code, body, err := get(h2, billing); err != nil || code != 200 || body != "CN=billing,O=payments" {
			t.Fatalf("h2=%v: with a client certificate: %d %q %v", h2, code, body, err)
		}
		if _, _, err := get(h2); err == nil {
			t.Fatalf("h2=%v: served without a client certificate", h2)
		}
		if _, _, err := get(h2, serving.IssueClient(t, 6, pkix.Name{CommonName: "billing"})); err == nil {
			t.Fatalf("h2=%v: served a client certificate of another CA", h2)
		}
	}

	// A bad CA file: refused and shown; the last good CA stays in force.
	certtest.InstallFile(t, caFile, []byte("not a certificate"))
	eventually(t, 30*time.Second, "the refused CA file in /readyz and the metric", func() bool {
		return strings.Contains(adminGet("/readyz"), "TLS client CA file on disk refused") &&
			strings.Contains(adminGet("/metrics"), "keygate_sidecar_tls_client_ca_refused 1")
	})
	if !strings.HasPrefix(adminGet("/readyz"), "ok") {
		t.Fatalf("a bad CA file failed readiness: %q", adminGet("/readyz"))
	}
	if code, body, err := get(true, billing); err != nil || code != 200 || body != "CN=billing,O=payments" {
		t.Fatalf("after a bad CA file: %d %q %v", code, body, err)
	}
}

func TestClientCAFlagNeedsTLS(t *testing.T) {
	err := run(context.Background(), []string{"--bundle-file", "bundle.json", "--upstream-port", "8080", "--tls-client-ca-file", "ca.crt"}, nil)
	if err == nil || !strings.Contains(err.Error(), "--tls-client-ca-file needs --tls-cert-file") {
		t.Fatalf("run with a client CA and no TLS: %v", err)
	}
}
