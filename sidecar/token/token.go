// Package token issues and verifies the sidecar's JWTs (go-jose v4) under the
// strict rules of RFC 8725: the algorithm comes from the key named by "kid",
// never from the token; exp, nbf, iss and aud are checked with a small leeway;
// tokens above a size cap are refused before parsing.
package token

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygate-dev/keygate/api/bundle"
)

// MaxSize is the largest token accepted, in bytes.
const MaxSize = 8 << 10

// Leeway is the clock skew tolerated on exp, nbf and iat; the operator keeps
// a revocation until the token's exp + Leeway.
const Leeway = bundle.TokenLeeway

// Errors returned by Verify. They never reach a client: every failure is one
// generic 401.
var (
	ErrMalformed  = errors.New("token malformed")
	ErrTooLarge   = errors.New("token too large")
	ErrUnknownKey = errors.New("token signed by an unknown or retired key")
	ErrAlgorithm  = errors.New("token algorithm does not match its key")
	ErrSignature  = errors.New("token signature invalid")
	ErrClaims     = errors.New("token claims invalid")
)

// Claims are the sidecar's token claims.
type Claims struct {
	jwt.Claims
	// Client is the sub-client a client token was issued for.
	Client string `json:"client,omitempty"`
	// Perms are the permissions the token carries.
	Perms []string `json:"perms,omitempty"`
	// CIDRs narrow the addresses the token may be used from.
	CIDRs []string `json:"cidrs,omitempty"`

	// keyRetiresAt is when the key that signed the token retires (set by
	// Verify for previous keys).
	keyRetiresAt *time.Time
}

// KeyRetiresAt is when the key that signed a verified token stops verifying
// tokens; nil for the current key.
func (c *Claims) KeyRetiresAt() *time.Time { return c.keyRetiresAt }

type verifyKey struct {
	alg       jose.SignatureAlgorithm
	key       any // public key, or []byte for HS256
	check     checkFunc
	retiresAt *time.Time
}

// Keyset signs with the current key and verifies with every key in force.
type Keyset struct {
	kid    string
	alg    jose.SignatureAlgorithm
	signer *compactSigner
	verify map[string]verifyKey
	// byHeader finds a key by a token's encoded header (encodedHeader).
	byHeader map[string]*verifyKey
	algs     []jose.SignatureAlgorithm
	issuer   string
	aud      string
	jwks     []jose.JSONWebKey
}

// NewKeyset compiles a bundle's signing keys for issuer and audience.
func NewKeyset(keys []bundle.SigningKey, issuer, audience string) (*Keyset, error) {
	if len(keys) == 0 {
		return nil, errors.New("no signing key")
	}
	ks := &Keyset{verify: make(map[string]verifyKey, len(keys)), byHeader: make(map[string]*verifyKey, len(keys)), issuer: issuer, aud: audience}
	seenAlg := map[jose.SignatureAlgorithm]bool{}
	for i, k := range keys {
		priv, err := k.PrivateKey()
		if err != nil {
			return nil, err
		}
		alg := jose.SignatureAlgorithm(k.Algorithm)
		pub := priv
		if pj, ok, err := k.PublicJWK(); err != nil {
			return nil, err
		} else if ok {
			pub = pj.Key
			if k.RetiresAt == nil || i == 0 || k.RetiresAt.After(time.Now()) {
				ks.jwks = append(ks.jwks, pj)
			}
		}
		if _, dup := ks.verify[k.KeyID]; dup {
			return nil, fmt.Errorf("signing key ID %s appears twice", k.KeyID)
		}
		check, err := newCheck(pub)
		if err != nil {
			return nil, fmt.Errorf("verifier for key %s: %w", k.KeyID, err)
		}
		vk := verifyKey{alg: alg, key: pub, check: check}
		if i > 0 {
			vk.retiresAt = k.RetiresAt
		}
		ks.verify[k.KeyID] = vk
		hdr, err := encodedHeader(k.Algorithm, k.KeyID)
		if err != nil {
			return nil, err
		}
		ks.byHeader[hdr] = &vk
		if !seenAlg[alg] {
			seenAlg[alg] = true
			ks.algs = append(ks.algs, alg)
		}
		if i == 0 {
			s, err := newCompactSigner(k.Algorithm, k.KeyID, priv)
			if err != nil {
				return nil, fmt.Errorf("signer for key %s: %w", k.KeyID, err)
			}
			ks.kid, ks.alg, ks.signer = k.KeyID, alg, s
		}
	}
	return ks, nil
}

// Algorithm is the algorithm of the current signing key.
func (ks *Keyset) Algorithm() string { return string(ks.alg) }

// JWKS is the public keys document (asymmetric keys only).
func (ks *Keyset) JWKS() jose.JSONWebKeySet {
	// RFC 7517 §5.1: "keys" is an array, also when there is no public key
	// (HS256); a nil slice would encode as null, which JWKS clients reject.
	if ks.jwks == nil {
		return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	}
	return jose.JSONWebKeySet{Keys: ks.jwks}
}

// Spec describes a token to issue.
type Spec struct {
	Subject string
	Client  string
	Perms   []string
	CIDRs   []string
	TTL     time.Duration
}

// NewID returns a fresh token ID: 128 random bits, base64url, so it only
// holds [-_a-zA-Z0-9] and can be a ConfigMap key.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Issue signs a new token and returns it with its claims.
func (ks *Keyset) Issue(s Spec, now time.Time) (string, *Claims, error) {
	now = now.Truncate(time.Second)
	exp := now.Add(s.TTL)
	id := NewID()
	raw, err := ks.signer.serialize(&wireClaims{Iss: ks.issuer, Sub: s.Subject, Aud: []string{ks.aud},
		Exp: exp.Unix(), Nbf: now.Unix(), Iat: now.Unix(), Jti: id, Client: s.Client, Perms: s.Perms, CIDRs: s.CIDRs})
	if err != nil {
		return "", nil, fmt.Errorf("sign token: %w", err)
	}
	c := &Claims{
		Claims: jwt.Claims{
			Issuer:    ks.issuer,
			Audience:  jwt.Audience{ks.aud},
			Subject:   s.Subject,
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    jwt.NewNumericDate(exp),
			ID:        id,
		},
		Client: s.Client,
		Perms:  s.Perms,
		CIDRs:  s.CIDRs,
	}
	return raw, c, nil
}

// ValidID reports whether a jti only holds [-._a-zA-Z0-9] (1..128 chars).
func ValidID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}
