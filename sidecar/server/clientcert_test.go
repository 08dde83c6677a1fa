package server

import (
	"crypto/tls"
	"crypto/x509/pkix"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keygate-dev/keygate/sidecar/servingcert/certtest"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// clientCertFront serves the harness's chain over TLS requiring client
// certificates of ca (HTTP/2 when h2), with a client presenting cert.
func clientCertFront(t *testing.T, h *harness, ca *certtest.CA, h2 bool, cert *tls.Certificate) {
	t.Helper()
	front := httptest.NewUnstartedServer(h.srv.Handler())
	front.EnableHTTP2 = h2
	front.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	front.StartTLS()
	t.Cleanup(front.Close)
	tr := front.Client().Transport.(*http.Transport)
	if cert != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
	}
	h.Base, h.HTTP = front.URL, front.Client()
}

// TestClientCertSubjectHeader: the verified client certificate's subject
// reaches the workload in X-Keygate-Client-Cert-Subject, over HTTP/1.1 and
// h2, on authenticated and public paths; a client's own copy of the header
// (any spelling) never passes, with or without client certificates.
func TestClientCertSubjectHeader(t *testing.T) {
	f := sidecartest.ChargesFixture()
	auth := sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])
	forged := []string{HeaderClientCertSubject, "CN=admin", "X_Keygate_Client_Cert_Subject", "CN=admin", "x-keygate-client-cert-subject", "CN=root"}
	ca := certtest.NewCA(t)
	for _, tc := range []struct {
		name    string
		subject pkix.Name
		want    string
	}{
		{"plain subject", pkix.Name{CommonName: "billing", Organization: []string{"payments"}, Country: []string{"DE"}}, "CN=billing,O=payments,C=DE"},
		{"RFC 4514 escapes", pkix.Name{CommonName: "a,b+c", OrganizationalUnit: []string{" x"}}, `CN=a\,b\+c,OU=\ x`},
		{"control and non-ASCII bytes", pkix.Name{CommonName: "evil\r\nX-Keygate-Key-Id: apk-other é"}, `CN=evil\0D\0AX-Keygate-Key-Id: apk-other \C3\A9`},
	} {
		for _, h2 := range []bool{false, true} {
			t.Run(tc.name+map[bool]string{false: " http1", true: " h2"}[h2], func(t *testing.T) {
				h := newHarness(t, f)
				cert := ca.IssueClient(t, 7, tc.subject)
				clientCertFront(t, h, ca, h2, &cert)
				for _, path := range []string{"/charges", "/healthz"} {
					r := h.Do("GET", path, "", append([]string{"Authorization", auth}, forged...)...)
					if r.Status != http.StatusOK {
						t.Fatalf("%s: %d %s", path, r.Status, r.Body)
					}
					s := r.Seen(t)
					for k, v := range s.Headers {
						if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), HeaderClientCertSubject) && k != HeaderClientCertSubject {
							t.Fatalf("%s: upstream got the client's %s: %v", path, k, v)
						}
					}
					if got := s.Headers[HeaderClientCertSubject]; len(got) != 1 || got[0] != tc.want {
						t.Fatalf("%s: %s = %q, want [%q]", path, HeaderClientCertSubject, got, tc.want)
					}
				}
			})
		}
	}

	// Without client certificates (plain HTTP, TLS without a client CA) the
	// header is removed and not set.
	for _, name := range []string{"plain", "tls"} {
		h := newHarness(t, f)
		if name == "tls" {
			h2Front(t, h)
		}
		r := h.Do("GET", "/charges", "", append([]string{"Authorization", auth}, forged...)...)
		for k, v := range r.Seen(t).Headers {
			if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), HeaderClientCertSubject) {
				t.Fatalf("%s: upstream got %s: %v", name, k, v)
			}
		}
	}
}
