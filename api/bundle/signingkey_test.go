package bundle

import (
	"testing"
	"time"
)

func TestNewSigningKeyRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	for _, alg := range []string{AlgEdDSA, AlgES256, AlgRS256, AlgHS256} {
		t.Run(alg, func(t *testing.T) {
			k, err := NewSigningKey(alg, now)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := k.PrivateKey(); err != nil {
				t.Fatalf("PrivateKey: %v", err)
			}
			pub, ok, err := k.PublicJWK()
			if err != nil {
				t.Fatal(err)
			}
			if ok == (alg == AlgHS256) {
				t.Fatalf("PublicJWK ok=%v for %s", ok, alg)
			}
			if ok && !pub.IsPublic() {
				t.Fatalf("public JWK of %s holds private material", alg)
			}
			// A key that claims another algorithm is refused.
			k.Algorithm = map[string]string{AlgEdDSA: AlgES256, AlgES256: AlgRS256, AlgRS256: AlgHS256, AlgHS256: AlgEdDSA}[alg]
			if _, err := k.PrivateKey(); err == nil {
				t.Fatalf("JWK of %s accepted as %s", alg, k.Algorithm)
			}
		})
	}
}

func TestNewSigningKeyUnknownAlgorithm(t *testing.T) {
	if _, err := NewSigningKey("none", time.Now()); err == nil {
		t.Fatal("algorithm none accepted")
	}
}
