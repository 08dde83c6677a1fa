package token

import (
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
)

func keyset(t testing.TB, alg string) *Keyset {
	sk, err := bundle.NewSigningKey(alg, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeyset([]bundle.SigningKey{sk}, "https://iss", "aud")
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestIssueVerify(t *testing.T) {
	now := time.Now()
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgES256, bundle.AlgRS256, bundle.AlgHS256} {
		t.Run(alg, func(t *testing.T) {
			ks := keyset(t, alg)
			raw, c, err := ks.Issue(Spec{Subject: "apk-1", Client: "acme", Perms: []string{"a:B"}, CIDRs: []string{"10.0.0.0/8"}, TTL: time.Hour}, now)
			if err != nil {
				t.Fatal(err)
			}
			if !ValidID(c.ID) {
				t.Fatalf("jti %q", c.ID)
			}
			got, err := ks.Verify(raw, now)
			if err != nil || got.Subject != "apk-1" || got.Client != "acme" || got.Perms[0] != "a:B" || got.CIDRs[0] != "10.0.0.0/8" {
				t.Fatalf("verify: %+v %v", got, err)
			}
			if _, err := ks.Verify(raw, now.Add(2*time.Hour)); err == nil {
				t.Fatal("expired token verified")
			}
			if _, err := keyset(t, alg).Verify(raw, now); err == nil {
				t.Fatal("verified with another keyset")
			}
		})
	}
}

func TestValidID(t *testing.T) {
	for id, ok := range map[string]bool{"abc-DEF_1.2": true, "": false, "a/b": false, "a b": false, "ä": false} {
		if ValidID(id) != ok {
			t.Fatalf("ValidID(%q) != %v", id, ok)
		}
	}
}
