package token

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"
	"sync"
)

// compactSigner produces JWS compact serialisations (RFC 7515 §7.1) for one
// key without go-jose's generic builder, which re-encodes the claims through
// a map and costs an order of magnitude more than the signature itself.
// Tokens it makes are verified by go-jose (see the round-trip tests).
type compactSigner struct {
	prefix string // base64url(header) + "."
	sign   func(signingInput []byte) ([]byte, error)
}

// encodedHeader is the base64url protected header of every token keygate
// signs with a key: {"alg":…,"kid":…,"typ":"JWT"}, the members in the order
// go-jose also writes them.
func encodedHeader(alg, kid string) (string, error) {
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{alg, kid, "JWT"})
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(hdr), nil
}

func newCompactSigner(alg, kid string, priv any) (*compactSigner, error) {
	hdr, err := encodedHeader(alg, kid)
	if err != nil {
		return nil, err
	}
	s := &compactSigner{prefix: hdr + "."}
	switch k := priv.(type) {
	case ed25519.PrivateKey:
		s.sign = func(in []byte) ([]byte, error) { return ed25519.Sign(k, in), nil }
	case *ecdsa.PrivateKey:
		s.sign = func(in []byte) ([]byte, error) {
			d := sha256.Sum256(in)
			r, ss, err := ecdsa.Sign(rand.Reader, k, d[:])
			if err != nil {
				return nil, err
			}
			out := make([]byte, 64)
			r.FillBytes(out[:32])
			ss.FillBytes(out[32:])
			return out, nil
		}
	case *rsa.PrivateKey:
		s.sign = func(in []byte) ([]byte, error) {
			d := sha256.Sum256(in)
			return rsa.SignPKCS1v15(nil, k, crypto.SHA256, d[:])
		}
	case []byte:
		pool := &sync.Pool{New: func() any { return hmac.New(sha256.New, k) }}
		s.sign = func(in []byte) ([]byte, error) {
			m := pool.Get().(hash.Hash)
			m.Reset()
			m.Write(in)
			out := m.Sum(nil)
			pool.Put(m)
			return out, nil
		}
	default:
		return nil, fmt.Errorf("unsupported key type %T", priv)
	}
	return s, nil
}

// wireClaims is the claims' JSON form, in a fixed order.
type wireClaims struct {
	Iss    string   `json:"iss"`
	Sub    string   `json:"sub"`
	Aud    []string `json:"aud"`
	Exp    int64    `json:"exp"`
	Nbf    int64    `json:"nbf"`
	Iat    int64    `json:"iat"`
	Jti    string   `json:"jti"`
	Client string   `json:"client,omitempty"`
	Perms  []string `json:"perms,omitempty"`
	CIDRs  []string `json:"cidrs,omitempty"`
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func (s *compactSigner) serialize(c *wireClaims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	bp := bufPool.Get().(*[]byte)
	buf := append((*bp)[:0], s.prefix...)
	buf = base64.RawURLEncoding.AppendEncode(buf, payload)
	sig, err := s.sign(buf)
	if err != nil {
		*bp = buf
		bufPool.Put(bp)
		return "", err
	}
	buf = append(buf, '.')
	buf = base64.RawURLEncoding.AppendEncode(buf, sig)
	out := string(buf)
	*bp = buf
	bufPool.Put(bp)
	return out, nil
}
