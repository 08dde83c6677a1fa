package servingcert

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/sidecar/servingcert/certtest"
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serve runs a TLS server on loopback with the source's configuration.
func serve(t *testing.T, src *Source) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(r.Proto))
	}), TLSConfig: src.TLSConfig()}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// servedSerial handshakes anew and returns the serial of the certificate the
// server presented (verified against the CA).
func servedSerial(t *testing.T, addr string, pool *x509.CertPool) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestReloadKeepsOpenConnections(t *testing.T) {
	authority := certtest.NewCA(t)
	dir := t.TempDir()
	c1, k1 := authority.Issue(t, 101)
	certtest.Install(t, dir, c1, k1)
	src, err := New(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = src.Start(ctx) }()
	addr := serve(t, src)
	if got := servedSerial(t, addr, authority.Pool); got != 101 {
		t.Fatalf("served serial %d, want 101", got)
	}

	// An HTTP/1.1 connection opened before the swap.
	open, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: authority.Pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = open.Close() }()
	rd := bufio.NewReader(open)
	get := func() {
		t.Helper()
		if _, err := open.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatalf("write on the open connection: %v", err)
		}
		resp, err := http.ReadResponse(rd, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request on the open connection: %v", err)
		}
		_ = resp.Body.Close()
	}
	get()

	// Load during the swap: new connections each time, bounded in count
	// and time; none may fail.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: authority.Pool}, DisableKeepAlives: true}}
	stop := make(chan struct{})
	type tally struct{ sent, failed int }
	done := make(chan tally)
	var started atomic.Int64
	go func() {
		var n tally
		deadline := time.Now().Add(30 * time.Second)
		for n.sent < 5000 && time.Now().Before(deadline) {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			n.sent++
			started.Add(1)
			resp, err := client.Get("https://" + addr + "/")
			if err != nil {
				n.failed++
				continue
			}
			_ = resp.Body.Close()
		}
		done <- n
	}()

	eventually(t, "the load to run", func() bool { return started.Load() >= 20 })
	c2, k2 := authority.Issue(t, 202)
	certtest.Install(t, dir, c2, k2)
	eventually(t, "new handshakes to present the new certificate", func() bool { return servedSerial(t, addr, authority.Pool) == 202 })
	close(stop)
	n := <-done
	t.Logf("requests during the swap: %d sent, %d failed", n.sent, n.failed)
	if n.failed != 0 || n.sent == 0 {
		t.Fatalf("%d of %d requests failed during the swap", n.failed, n.sent)
	}
	get() // the connection opened before the swap keeps working
	if got := open.ConnectionState().PeerCertificates[0].SerialNumber.Int64(); got != 101 {
		t.Fatalf("open connection's certificate changed to %d", got)
	}
	eventually(t, "Err to be clear after a good swap", func() bool { return src.Err() == nil })
}

func TestBadPairKeepsTheLastGoodOne(t *testing.T) {
	authority := certtest.NewCA(t)
	dir := t.TempDir()
	c1, k1 := authority.Issue(t, 7)
	certtest.Install(t, dir, c1, k1)
	src, err := New(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = src.Start(ctx) }()
	addr := serve(t, src)

	// A certificate with another pair's key: refused, the old pair serves.
	c2, _ := authority.Issue(t, 8)
	_, k3 := authority.Issue(t, 9)
	certtest.Install(t, dir, c2, k3)
	eventually(t, "the refused pair to show in Err", func() bool { return src.Err() != nil })
	for range 5 {
		if got := servedSerial(t, addr, authority.Pool); got != 7 {
			t.Fatalf("served serial %d after a bad pair, want the last good 7", got)
		}
	}
	// A good pair again clears the error and serves.
	c4, k4 := authority.Issue(t, 10)
	certtest.Install(t, dir, c4, k4)
	eventually(t, "the good pair to serve and clear Err", func() bool {
		return src.Err() == nil && servedSerial(t, addr, authority.Pool) == 10
	})
}

func TestTLSDefaults(t *testing.T) {
	authority := certtest.NewCA(t)
	dir := t.TempDir()
	c, k := authority.Issue(t, 1)
	certtest.Install(t, dir, c, k)
	src, err := New(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), 0)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, src)
	// TLS 1.1 is refused.
	if conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: authority.Pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		_ = conn.Close()
		t.Fatal("TLS 1.1 handshake accepted")
	}
	// ALPN: h2 and http/1.1 offered.
	for _, proto := range []string{"h2", "http/1.1"} {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: authority.Pool, NextProtos: []string{proto}})
		if err != nil {
			t.Fatal(err)
		}
		if got := conn.ConnectionState().NegotiatedProtocol; got != proto {
			t.Fatalf("ALPN %q negotiated %q", proto, got)
		}
		_ = conn.Close()
	}
	// A missing pair at start is an error naming the files.
	if _, err := New(filepath.Join(dir, "none.crt"), filepath.Join(dir, "none.key"), 0); err == nil {
		t.Fatal("missing files accepted")
	}
}
