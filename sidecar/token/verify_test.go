package token

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygate-dev/keygate/api/bundle"
)

// verifyJose is the previous Verify, go-jose's own parse and verification:
// the oracle the one-pass Verify is checked against.
func (ks *Keyset) verifyJose(raw string, now time.Time) (*Claims, error) {
	if len(raw) > MaxSize {
		return nil, ErrTooLarge
	}
	if strings.Count(raw, ".") != 2 {
		return nil, ErrMalformed
	}
	tok, err := jwt.ParseSigned(raw, ks.algs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if len(tok.Headers) != 1 {
		return nil, ErrMalformed
	}
	h := tok.Headers[0]
	vk, ok := ks.verify[h.KeyID]
	if !ok || h.KeyID == "" {
		return nil, ErrUnknownKey
	}
	if vk.retiresAt != nil && !now.Before(*vk.retiresAt) {
		return nil, ErrUnknownKey
	}
	if jose.SignatureAlgorithm(h.Algorithm) != vk.alg {
		return nil, ErrAlgorithm
	}
	if len(h.ExtraHeaders) > 0 {
		if _, crit := h.ExtraHeaders["crit"]; crit {
			return nil, ErrMalformed
		}
	}
	c := &Claims{}
	if err := tok.Claims(vk.key, c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	c.keyRetiresAt = vk.retiresAt
	if c.Expiry == nil || c.IssuedAt == nil || !ValidID(c.ID) || c.Subject == "" {
		return nil, ErrClaims
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: ks.issuer, AnyAudience: jwt.Audience{ks.aud}, Time: now}, Leeway); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClaims, err)
	}
	return c, nil
}

// agree checks Verify against verifyJose on raw: Verify may refuse more,
// never accept what go-jose refuses, and both give the same claims.
func agree(t *testing.T, ks *Keyset, raw string, now time.Time) (accepted bool) {
	t.Helper()
	got, err := ks.Verify(raw, now)
	want, jerr := ks.verifyJose(raw, now)
	if err == nil && jerr != nil {
		t.Fatalf("Verify accepted what go-jose refuses (%v): %q", jerr, raw)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("claims differ:\n got %+v\nwant %+v", got, want)
	}
	return err == nil
}

// forge builds a compact JWS from header and payload JSON, signed by ks's
// current key (or with sig when not empty).
func forge(t *testing.T, ks *Keyset, hdr, payload string) string {
	t.Helper()
	in := b64.EncodeToString([]byte(hdr)) + "." + b64.EncodeToString([]byte(payload))
	sig, err := ks.signer.sign([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + b64.EncodeToString(sig)
}

// verifyCorpus are tokens around the valid one: tampered, re-signed with
// odd headers or claims, other keys.
func verifyCorpus(t *testing.T, ks, other *Keyset, now time.Time) (valid string, corpus []string) {
	valid, _, err := ks.Issue(Spec{Subject: "apk-1", Client: "acme", Perms: []string{"a:B"}, CIDRs: []string{"10.0.0.0/8"}, TTL: time.Hour}, now)
	if err != nil {
		t.Fatal(err)
	}
	alg, kid := string(ks.alg), ks.kid
	hdr := fmt.Sprintf(`{"alg":%q,"kid":%q,"typ":"JWT"}`, alg, kid)
	claims := func(extra string) string {
		return fmt.Sprintf(`{"iss":"https://iss","sub":"apk-1","aud":["aud"],"exp":%d,"iat":%d,"jti":"id1"%s}`, now.Add(time.Hour).Unix(), now.Unix(), extra)
	}
	parts := strings.Split(valid, ".")
	otherTok, _, _ := other.Issue(Spec{Subject: "apk-1", TTL: time.Hour}, now)
	corpus = []string{
		valid,
		valid + "=", parts[0] + "=." + parts[1] + "." + parts[2], parts[0] + "." + parts[1] + "=." + parts[2],
		parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-1], parts[0] + "." + parts[1] + ".", "." + parts[1] + "." + parts[2],
		parts[0] + "." + parts[1][:len(parts[1])-2] + "." + parts[2], valid + ".x", parts[0] + ".." + parts[2],
		otherTok,
		forge(t, ks, hdr, claims("")),
		forge(t, ks, hdr, claims(`,"client":"c","perms":["x:Y"],"cidrs":["1.2.3.4/32"],"nbf":1`)),
		forge(t, ks, fmt.Sprintf(`{"alg":"none","kid":%q}`, kid), claims("")),
		forge(t, ks, fmt.Sprintf(`{"alg":"HS256","kid":%q}`, kid), claims("")),
		forge(t, ks, fmt.Sprintf(`{"alg":%q,"kid":"nope"}`, alg), claims("")),
		forge(t, ks, fmt.Sprintf(`{"alg":%q}`, alg), claims("")),
		forge(t, ks, fmt.Sprintf(`{"alg":%q,"kid":%q,"crit":["exp"],"exp":1}`, alg, kid), claims("")),
		forge(t, ks, fmt.Sprintf(`{"alg":%q,"kid":%q,"b64":false,"crit":["b64"]}`, alg, kid), claims("")),
		forge(t, ks, fmt.Sprintf(`{"alg":%q,"kid":%q,"jwk":{"kty":"oct","k":"AAAA"}}`, alg, kid), claims("")),
		forge(t, ks, fmt.Sprintf(`{"alg":%q,"kid":%q`, alg, kid), claims("")),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":"aud","exp":9999999999,"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["aud"],"exp":9999999999.5,"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://other","sub":"apk-1","aud":["aud"],"exp":9999999999,"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["x"],"exp":9999999999,"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["aud"],"exp":1,"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["aud"],"exp":9999999999,"iat":9999999990,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["aud"],"exp":9999999999,"nbf":9999999990,"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["aud"],"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"","aud":["aud"],"exp":9999999999,"iat":1,"jti":"a"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["aud"],"exp":9999999999,"iat":1,"jti":"a/b"}`),
		forge(t, ks, hdr, `{"iss":"https://iss","sub":"apk-1","aud":["aud"],"exp":9999999999,"iat":1,"jti":"a","ISS":"x"}`),
		forge(t, ks, hdr, `[]`),
		forge(t, ks, hdr, `not json`),
	}
	return valid, corpus
}

func TestVerifyAgreesWithGoJose(t *testing.T) {
	now := time.Now()
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgES256, bundle.AlgRS256, bundle.AlgHS256} {
		t.Run(alg, func(t *testing.T) {
			ks, other := keyset(t, alg), keyset(t, alg)
			valid, corpus := verifyCorpus(t, ks, other, now)
			if !agree(t, ks, valid, now) {
				t.Fatal("the valid token was refused")
			}
			accepted := 0
			for _, raw := range corpus {
				if agree(t, ks, raw, now) {
					accepted++
				}
			}
			// valid, the two forged plain tokens and the one with a string
			// "aud" (go-jose writes a one-element audience so); headers not
			// in keygate's exact form are refused.
			if accepted != 4 {
				t.Fatalf("%d of the corpus accepted, want 4", accepted)
			}
		})
	}
}

// FuzzVerify mutates tokens of the corpus (EdDSA and HS256 keysets fixed
// per process): Verify never accepts what go-jose refuses.
func FuzzVerify(f *testing.F) {
	t := &testing.T{}
	now := time.Now()
	keysets := []*Keyset{keyset(f, bundle.AlgEdDSA), keyset(f, bundle.AlgHS256)}
	for i, ks := range keysets {
		_, corpus := verifyCorpus(t, ks, keysets[1-i], now)
		for _, raw := range corpus {
			f.Add(uint8(i), raw)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, raw string) {
		agree(t, keysets[int(which)%len(keysets)], raw, now)
	})
}

// BenchmarkVerifyGoJose is the previous, go-jose-only verification, for
// comparison with BenchmarkVerify.
func BenchmarkVerifyGoJose(b *testing.B) {
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgHS256} {
		b.Run(alg, func(b *testing.B) {
			ks := keyset(b, alg)
			now := time.Now()
			raw, _, _ := ks.Issue(Spec{Subject: "apk-07", Perms: []string{"charges:List", "reports:All"}, TTL: time.Hour}, now)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := ks.verifyJose(raw, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
