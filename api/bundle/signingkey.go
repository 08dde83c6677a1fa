package bundle

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Signing algorithms a bundle may carry.
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
	AlgRS256 = "RS256"
	AlgHS256 = "HS256"
)

// NewSigningKey makes a fresh private key for alg and returns it as a bundle
// SigningKey whose JWK has "kid" and "alg" set. The key ID is the creation
// date plus random characters, so `kubectl` readers can tell keys apart.
func NewSigningKey(alg string, now time.Time) (SigningKey, error) {
	var key any
	var err error
	switch alg {
	case AlgEdDSA:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case AlgES256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case AlgRS256:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case AlgHS256:
		b := make([]byte, 32)
		_, err = rand.Read(b)
		key = b
	default:
		return SigningKey{}, fmt.Errorf("unsupported signing algorithm %q", alg)
	}
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate %s key: %w", alg, err)
	}
	var suffix [5]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return SigningKey{}, fmt.Errorf("generate key ID: %w", err)
	}
	kid := now.UTC().Format("20060102") + "-" + strings.ToLower(base32.StdEncoding.EncodeToString(suffix[:]))
	jwk := jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: alg, Use: "sig"}
	raw, err := json.Marshal(jwk)
	if err != nil {
		return SigningKey{}, fmt.Errorf("encode %s key as JWK: %w", alg, err)
	}
	return SigningKey{KeyID: kid, Algorithm: alg, JWK: raw, CreatedAt: now.UTC().Truncate(time.Second)}, nil
}

// PrivateKey decodes the key's JWK. The result is an ed25519.PrivateKey,
// *ecdsa.PrivateKey, *rsa.PrivateKey or []byte (HS256), checked against Algorithm.
func (k SigningKey) PrivateKey() (any, error) {
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(k.JWK); err != nil {
		return nil, fmt.Errorf("decode signing key %s: %w", k.KeyID, err)
	}
	ok := false
	switch key := jwk.Key.(type) {
	case ed25519.PrivateKey:
		ok = k.Algorithm == AlgEdDSA
	case *ecdsa.PrivateKey:
		ok = k.Algorithm == AlgES256 && key.Curve == elliptic.P256()
	case *rsa.PrivateKey:
		ok = k.Algorithm == AlgRS256 && key.N.BitLen() >= 2048
	case []byte:
		ok = k.Algorithm == AlgHS256 && len(key) >= 32
	}
	if !ok {
		return nil, fmt.Errorf("signing key %s: JWK does not hold a private %s key", k.KeyID, k.Algorithm)
	}
	return jwk.Key, nil
}

// PublicJWK returns the public half of an asymmetric key as a JWK for the
// JWKS document; ok is false for HS256, whose key is never published.
func (k SigningKey) PublicJWK() (jwk jose.JSONWebKey, ok bool, err error) {
	priv, err := k.PrivateKey()
	if err != nil {
		return jose.JSONWebKey{}, false, err
	}
	signer, isSigner := priv.(crypto.Signer)
	if !isSigner {
		return jose.JSONWebKey{}, false, nil
	}
	return jose.JSONWebKey{Key: signer.Public(), KeyID: k.KeyID, Algorithm: k.Algorithm, Use: "sig"}, true, nil
}
