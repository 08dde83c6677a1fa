package token

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// Uncached verification: one pass over the compact form. The encoded header
// must be exactly the one keygate writes for one of the keyset's keys
// ({"alg","kid","typ":"JWT"}, looked up as a string, no JSON), so the key
// and its algorithm are fixed before anything is decoded. The signature is
// checked over the raw signing input by a verifier built once per key with
// the same standard-library primitive go-jose calls (ed25519.Verify, ecdsa.Verify, rsa.VerifyPKCS1v15,
// HMAC-SHA256 with hmac.Equal). Only an authentic payload is decoded, once,
// into a flat struct; claim checks are go-jose's ValidateWithLeeway. Tests
// check every outcome against go-jose's own parse-and-verify (the previous
// implementation) on a corpus and a fuzz target: this path may refuse what
// go-jose accepts (padding, header members other than alg/kid/typ, fractional
// dates — forms keygate never issues) but never the reverse.

// checkFunc reports whether sig signs input.
type checkFunc func(input, sig []byte) bool

func newCheck(key any) (checkFunc, error) {
	switch k := key.(type) {
	case ed25519.PublicKey:
		return func(in, sig []byte) bool { return len(sig) == ed25519.SignatureSize && ed25519.Verify(k, in, sig) }, nil
	case *ecdsa.PublicKey:
		return func(in, sig []byte) bool {
			if len(sig) != 64 {
				return false
			}
			d := sha256.Sum256(in)
			return ecdsa.Verify(k, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
		}, nil
	case *rsa.PublicKey:
		return func(in, sig []byte) bool {
			d := sha256.Sum256(in)
			return rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig) == nil
		}, nil
	case []byte:
		pool := &sync.Pool{New: func() any { return hmac.New(sha256.New, k) }}
		return func(in, sig []byte) bool {
			m := pool.Get().(hash.Hash)
			m.Reset()
			m.Write(in)
			var sum [sha256.Size]byte
			ok := hmac.Equal(m.Sum(sum[:0]), sig)
			pool.Put(m)
			return ok
		}, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", key)
}

// header is the protected header as keygate writes it; any other member
// (crit, b64, jwk, jku, x5c, ...) makes the token malformed.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// flatClaims is the payload as keygate signs it.
type flatClaims struct {
	Iss    string       `json:"iss"`
	Sub    string       `json:"sub"`
	Aud    jwt.Audience `json:"aud"`
	Exp    *int64       `json:"exp"`
	Nbf    *int64       `json:"nbf"`
	Iat    *int64       `json:"iat"`
	Jti    string       `json:"jti"`
	Client string       `json:"client"`
	Perms  []string     `json:"perms"`
	CIDRs  []string     `json:"cidrs"`
}

var b64 = base64.RawURLEncoding.Strict()

// Verify checks raw and returns its claims. It does not consult revocations.
func (ks *Keyset) Verify(raw string, now time.Time) (*Claims, error) {
	if len(raw) > MaxSize {
		return nil, ErrTooLarge
	}
	i := strings.IndexByte(raw, '.')
	j := strings.LastIndexByte(raw, '.')
	if i <= 0 || j == i || j == len(raw)-1 || strings.IndexByte(raw[i+1:j], '.') >= 0 {
		return nil, ErrMalformed
	}
	vk := ks.byHeader[raw[:i]]
	if vk == nil {
		return nil, ks.headerError(raw[:i])
	}
	if vk.retiresAt != nil && !now.Before(*vk.retiresAt) {
		return nil, ErrUnknownKey
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:0]
	sig, err := b64.AppendDecode(buf, []byte(raw[j+1:]))
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrMalformed, err)
	}
	if !vk.check([]byte(raw[:j]), sig) {
		return nil, ErrSignature
	}
	pb, err := b64.AppendDecode(sig[len(sig):], []byte(raw[i+1:j]))
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}
	var f flatClaims
	if err := json.Unmarshal(pb, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClaims, err)
	}
	c := &Claims{
		Claims: jwt.Claims{Issuer: f.Iss, Subject: f.Sub, Audience: f.Aud, ID: f.Jti,
			Expiry: date(f.Exp), NotBefore: date(f.Nbf), IssuedAt: date(f.Iat)},
		Client: f.Client, Perms: f.Perms, CIDRs: f.CIDRs,
		keyRetiresAt: vk.retiresAt,
	}
	if c.Expiry == nil || c.IssuedAt == nil || !ValidID(c.ID) || c.Subject == "" {
		return nil, ErrClaims
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: ks.issuer, AnyAudience: jwt.Audience{ks.aud}, Time: now}, Leeway); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClaims, err)
	}
	return c, nil
}

// headerError explains why an encoded header is not one of the keyset's:
// unknown key, an algorithm other than the key's, or anything else.
func (ks *Keyset) headerError(enc string) error {
	hb, err := b64.DecodeString(enc)
	if err != nil {
		return fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	var h header
	dec := json.NewDecoder(bytes.NewReader(hb))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	vk, ok := ks.verify[h.Kid]
	switch {
	case !ok || h.Kid == "":
		return ErrUnknownKey
	case h.Alg != string(vk.alg):
		return ErrAlgorithm
	}
	return fmt.Errorf("%w: header is not in keygate's form", ErrMalformed)
}

func date(sec *int64) *jwt.NumericDate {
	if sec == nil {
		return nil
	}
	return jwt.NewNumericDate(time.Unix(*sec, 0))
}
