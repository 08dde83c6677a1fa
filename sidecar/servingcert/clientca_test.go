package servingcert

import (
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keygate-dev/keygate/sidecar/servingcert/certtest"
)

// serveClientCAs runs a TLS server on loopback that requires client
// certificates of cas and answers with the verified subject.
func serveClientCAs(t *testing.T, src *Source, cas *ClientCAs) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := src.TLSConfig()
	cas.Require(cfg)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.TLS.VerifiedChains[0][0].Subject.CommonName)
	}), TLSConfig: cfg}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// TestClientCAs: client certificates are required and verified against the
// CA file in force, over HTTP/1.1 and h2; a new file takes effect for new
// handshakes (seen by file events); a bad file keeps the last good CAs and
// shows in Err and the metric.
func TestClientCAs(t *testing.T) {
	server := certtest.NewCA(t)
	dir := t.TempDir()
	c, k := server.Issue(t, 1)
	certtest.Install(t, dir, c, k)
	src, err := New(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caA, caB := certtest.NewCA(t), certtest.NewCA(t)
	caFile := filepath.Join(dir, "ca.crt")
	certtest.InstallFile(t, caFile, caA.PEM())
	// An hour between polls: the changes below are seen by file events.
	cas, err := NewClientCAs(caFile, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = cas.Start(ctx) }()
	addr := serveClientCAs(t, src, cas)

	fromA := caA.IssueClient(t, 10, pkix.Name{CommonName: "billing", Organization: []string{"payments"}})
	fromB := caB.IssueClient(t, 11, pkix.Name{CommonName: "stranger"})
	get := func(h2 bool, certs ...tls.Certificate) (string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: server.Pool, Certificates: certs}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		return resp.Proto + " " + string(b), err
	}
	for _, h2 := range []bool{false, true} {
		want := map[bool]string{false: "HTTP/1.1 billing", true: "HTTP/2.0 billing"}[h2]
		if got, err := get(h2, fromA); err != nil || got != want {
			t.Fatalf("h2=%v: client certificate of the CA in force: %q %v, want %q", h2, got, err, want)
		}
		if _, err := get(h2); err == nil {
			t.Fatalf("h2=%v: served without a client certificate", h2)
		}
		if _, err := get(h2, fromB); err == nil {
			t.Fatalf("h2=%v: served a client certificate of another CA", h2)
		}
	}

	// A new CA file: the next handshakes verify against it.
	certtest.InstallFile(t, caFile, caB.PEM())
	eventually(t, "the new client CA in force", func() bool {
		_, errA := get(false, fromA)
		got, errB := get(false, fromB)
		return errA != nil && errB == nil && got == "HTTP/1.1 stranger"
	})

	// A bad file: refused, shown, the last good CA (B) stays in force.
	reg := prometheus.NewRegistry()
	reg.MustRegister(cas.Collector())
	for _, bad := range [][]byte{[]byte("garbage"), {}, c[:len(c)/2], k} {
		certtest.InstallFile(t, caFile, bad)
		eventually(t, "the refused CA file in Err and the metric", func() bool {
			n, err := testutil.GatherAndCount(reg, "keygate_sidecar_tls_client_ca_refused")
			return cas.Err() != nil && err == nil && n == 1 &&
				testutil.ToFloat64(cas.Collector()) == 1
		})
		if got, err := get(true, fromB); err != nil || got != "HTTP/2.0 stranger" {
			t.Fatalf("after a bad CA file %q: %q %v, want the last good CA in force", bad, got, err)
		}
	}
	if !strings.Contains(cas.Err().Error(), caFile) {
		t.Fatalf("Err does not name the file: %v", cas.Err())
	}
	certtest.InstallFile(t, caFile, caA.PEM())
	eventually(t, "a good file clearing the error", func() bool {
		got, err := get(false, fromA)
		return cas.Err() == nil && err == nil && got == "HTTP/1.1 billing" && testutil.ToFloat64(cas.Collector()) == 0
	})
}

func TestNewClientCAsRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{"empty": {}, "garbage": []byte("nope"), "key": []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewClientCAs(p, time.Second); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewClientCAs(filepath.Join(dir, "missing"), time.Second); err == nil {
		t.Error("missing file accepted")
	}
}
