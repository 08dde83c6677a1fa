package webhookcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned returns a PEM certificate and key valid from notBefore to notAfter.
func selfSigned(t *testing.T, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "keygate-webhook-service.keygate-system.svc"},
		DNSNames:     []string{"keygate-webhook-service.keygate-system.svc"},
		NotBefore:    notBefore, NotAfter: notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

func TestHolder(t *testing.T) {
	h := NewHolder()
	if _, err := h.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Fatal("an empty holder served a certificate")
	}
	now := time.Now()
	c1, k1 := selfSigned(t, now.Add(-time.Hour), now.Add(time.Hour))
	c2, k2 := selfSigned(t, now.Add(-time.Hour), now.Add(2*time.Hour))
	if err := h.Set(c1, k2); err == nil {
		t.Error("Set accepted a certificate with another key")
	}
	for _, pair := range [][2][]byte{{c1, k1}, {c2, k2}} {
		if err := h.Set(pair[0], pair[1]); err != nil {
			t.Fatal(err)
		}
		got, err := h.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(pair[0])
		if string(got.Certificate[0]) != string(block.Bytes) || string(h.Current().Raw) != string(block.Bytes) {
			t.Error("the holder does not serve the certificate last set")
		}
	}
}

func TestCheckCertDir(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		from, to time.Time
		files    bool
		want     string
	}{
		{"valid", now.Add(-time.Hour), now.Add(time.Hour), true, ""},
		{"no files", time.Time{}, time.Time{}, false, "webhook certificate not loaded"},
		{"expired", now.Add(-2 * time.Hour), now.Add(-time.Hour), true, "not valid now"},
		{"not yet valid", now.Add(time.Hour), now.Add(2 * time.Hour), true, "not valid now"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.files {
				c, k := selfSigned(t, tt.from, tt.to)
				if err := writeFileAtomic(filepath.Join(dir, CertFile), c); err != nil {
					t.Fatal(err)
				}
				if err := writeFileAtomic(filepath.Join(dir, KeyFile), k); err != nil {
					t.Fatal(err)
				}
				if fi, err := os.Stat(filepath.Join(dir, KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("key file mode = %v, %v; want 0600", fi.Mode(), err)
				}
			}
			err := checkCertDir(dir)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("checkCertDir = %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("checkCertDir = %v, want %q", err, tt.want)
			}
		})
	}
}
