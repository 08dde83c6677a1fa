// Package bundle defines the policy bundle: the document the operator writes
// into the Secret keygate-<policy> and every sidecar of that policy reads (from
// the Secret, or from a file with --bundle-file). It holds the resolved policy,
// the signing keys and, for each Ready ApiKey, only keyed digests of its
// secrets — never a secret in clear. docs/bundle.md describes the format.
package bundle

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// FormatVersion is the Version of an unsharded bundle. This package also
// reads and writes sharded ones (FormatVersionV2, shard.go).
const FormatVersion = "keygate.dev/bundle/v1"

// SecretDataKey is the key of the bundle document in the bundle Secret's data.
const SecretDataKey = "bundle.json"

// SecretName is the name of the bundle Secret of a TokenPolicy.
func SecretName(policy string) string { return "keygate-" + policy }

// TokenLeeway is the clock skew sidecars tolerate on a token's exp, nbf and
// iat: a token is accepted until exp + TokenLeeway, so its revocation must be
// kept at least that long.
const TokenLeeway = 30 * time.Second

// RevocationsConfigMapName is the name of the revocations ConfigMap of a
// TokenPolicy. Its data maps a revoked token's ID (jti) to the token's expiry
// in RFC 3339; entries are pruned once the token has expired and TokenLeeway
// has passed.
func RevocationsConfigMapName(policy string) string { return "keygate-" + policy + "-revocations" }

// UsageConfigMapName is the name of the usage ConfigMap of a TokenPolicy.
// The sidecars merge-patch into its data, at most once a minute each, the key
// IDs that authenticated, mapped to the minute (RFC 3339, UTC) in which they
// last did; the operator folds it into ApiKey.status.lastUsedTime.
func UsageConfigMapName(policy string) string { return "keygate-" + policy + "-usage" }

// Bundle is everything a sidecar needs to enforce one TokenPolicy.
type Bundle struct {
	// Version is FormatVersion, or FormatVersionV2 for the index of a
	// sharded bundle.
	Version string `json:"version"`
	// Policy is the TokenPolicy's spec, with defaults applied.
	Policy Policy `json:"policy"`
	// HashKey is the per-policy HMAC-SHA256 key of the secret digests.
	HashKey []byte `json:"hashKey"`
	// SigningKeys are the token signing keys, the current one first; the others
	// only verify tokens until their RetiresAt.
	SigningKeys []SigningKey `json:"signingKeys"`
	// Keys are the policy's Ready ApiKeys, sorted by KeyID (v1; empty in a
	// v2 index).
	Keys []Key `json:"keys"`
	// Shards names the shard Secrets of a v2 index, shard i at place i.
	Shards []string `json:"shards,omitempty"`
}

// Policy is the resolved TokenPolicy.
type Policy struct {
	Namespace             string   `json:"namespace"`
	Name                  string   `json:"name"`
	Issuer                string   `json:"issuer"`
	Audience              string   `json:"audience"`
	TokenTTLSeconds       int64    `json:"tokenTTLSeconds"`
	ClientTokenTTLSeconds int64    `json:"clientTokenTTLSeconds"`
	Basic                 bool     `json:"basic"`
	BearerSchemes         []string `json:"bearerSchemes"`
	APIKeyHeader          string   `json:"apiKeyHeader,omitempty"`
	Grants                []string `json:"grants"`
	TokenPaths            []string `json:"tokenPaths"`
	AllowedCIDRs          []string `json:"allowedCIDRs,omitempty"`
	TrustedProxies        []string `json:"trustedProxies,omitempty"`
	PublicPaths           []string `json:"publicPaths,omitempty"`
	Rules                 []Rule   `json:"rules,omitempty"`
	// DefaultAction is "Deny" or "Authenticated".
	DefaultAction string `json:"defaultAction"`
	// Enforcement is "Audit", or empty for Enforce (left out, so that bundles
	// of Enforce policies keep their bytes).
	Enforcement string `json:"enforcement,omitempty"`
	// RateLimit is the default request rate limit of the policy's keys.
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
	// RequireTLS refuses token issuance over plain HTTP (left out when false,
	// so that existing bundles keep their bytes).
	RequireTLS bool `json:"requireTLS,omitempty"`
}

// RateLimit is a token bucket: Burst requests at once, refilled at Requests
// per PerMillis milliseconds; enforced by each sidecar on its own.
type RateLimit struct {
	Requests  int64 `json:"requests"`
	PerMillis int64 `json:"perMillis"`
	Burst     int64 `json:"burst"`
}

// EnforcementAudit is Policy.Enforcement of a policy in Audit mode.
const EnforcementAudit = "Audit"

// Rule maps requests to the permission they need; the first match wins.
type Rule struct {
	// Methods matched; empty or "*" matches every method.
	Methods []string `json:"methods,omitempty"`
	// Paths matched exactly, or by prefix when they end in "/*".
	Paths      []string `json:"paths"`
	Permission string   `json:"permission"`
}

// SigningKey is one token signing key.
type SigningKey struct {
	// KeyID is the "kid" header of the tokens it signs.
	KeyID string `json:"kid"`
	// Algorithm is EdDSA, ES256, RS256 or HS256.
	Algorithm string `json:"alg"`
	// JWK is the private key as a JSON Web Key (RFC 7517), "kid" and "alg" set.
	JWK json.RawMessage `json:"jwk"`
	// CreatedAt is when the key was made.
	CreatedAt time.Time `json:"createdAt"`
	// RetiresAt is set on previous keys: they verify tokens until then and sign none.
	RetiresAt *time.Time `json:"retiresAt,omitempty"`
}

// Key is one Ready ApiKey.
type Key struct {
	// Name is the ApiKey object's name.
	Name string `json:"name"`
	// KeyID is the public key identifier (the Basic user name).
	KeyID string `json:"keyID"`
	// Secrets are the digests of the secrets that work, the current one first;
	// a previous secret carries the end of its grace period in ExpiresAt.
	Secrets      []SecretDigest `json:"secrets"`
	Permissions  []string       `json:"permissions,omitempty"`
	AllowedCIDRs []string       `json:"allowedCIDRs,omitempty"`
	Clients      []Client       `json:"clients,omitempty"`
	// ExpiresAt is when the key itself stops working, if ever.
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	// RateLimit is the key's own request rate limit (else the policy's).
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
}

// SecretDigest is HMAC-SHA256(Bundle.HashKey, secret) of one secret.
type SecretDigest struct {
	Digest    []byte     `json:"digest"`
	Version   int64      `json:"version"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
}

// Client is a sub-client of a key, with a subset of its permissions.
type Client struct {
	Key         string   `json:"key"`
	Permissions []string `json:"permissions,omitempty"`
	// RateLimit is the client's own request rate limit (else the key's).
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
}

// Digest returns HMAC-SHA256(hashKey, secret), the form in which a secret is
// stored in the bundle. Compare digests with hmac.Equal.
func Digest(hashKey []byte, secret string) []byte {
	m := hmac.New(sha256.New, hashKey)
	m.Write([]byte(secret))
	return m.Sum(nil)
}

// Marshal encodes b. The encoding is deterministic, so an unchanged bundle
// encodes to unchanged bytes and the operator can skip the write.
func Marshal(b *Bundle) ([]byte, error) { return json.Marshal(b) }

// Parse decodes and validates a bundle document. An invalid document is
// rejected whole, with every problem found.
func Parse(data []byte) (*Bundle, error) {
	b := &Bundle{}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(b); err != nil {
		return nil, fmt.Errorf("decode bundle: %w", err)
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return b, nil
}

// Validate reports every problem of b together.
func (b *Bundle) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch b.Version {
	case FormatVersion:
		if len(b.Shards) > 0 {
			bad("a %s bundle has no shards", FormatVersion)
		}
	case FormatVersionV2:
		if len(b.Shards) == 0 || len(b.Keys) > 0 {
			bad("a %s index names shards and holds no keys", FormatVersionV2)
		}
	default:
		bad("version %q is not %q or %q", b.Version, FormatVersion, FormatVersionV2)
	}
	p := &b.Policy
	if p.Issuer == "" {
		bad("policy.issuer is empty")
	}
	if p.Audience == "" {
		bad("policy.audience is empty")
	}
	if p.TokenTTLSeconds <= 0 || p.ClientTokenTTLSeconds <= 0 {
		bad("policy token TTLs must be positive")
	}
	if len(p.BearerSchemes) == 0 {
		bad("policy.bearerSchemes is empty")
	}
	if p.DefaultAction != "Deny" && p.DefaultAction != "Authenticated" {
		bad("policy.defaultAction %q is not Deny or Authenticated", p.DefaultAction)
	}
	if p.Enforcement != "" && p.Enforcement != EnforcementAudit {
		bad("policy.enforcement %q is not Audit (Enforce is written as empty)", p.Enforcement)
	}
	checkCIDRs := func(field string, cidrs []string) {
		for _, c := range cidrs {
			if _, err := netip.ParsePrefix(c); err != nil {
				bad("%s: %q is not a CIDR block", field, c)
			}
		}
	}
	checkCIDRs("policy.allowedCIDRs", p.AllowedCIDRs)
	checkCIDRs("policy.trustedProxies", p.TrustedProxies)
	for i, r := range p.Rules {
		if len(r.Paths) == 0 || r.Permission == "" {
			bad("policy.rules[%d] needs paths and a permission", i)
		}
	}
	if len(b.HashKey) < 32 {
		bad("hashKey is shorter than 32 bytes")
	}
	if len(b.SigningKeys) == 0 {
		bad("signingKeys is empty")
	}
	for i, k := range b.SigningKeys {
		if k.KeyID == "" || k.Algorithm == "" || len(k.JWK) == 0 {
			bad("signingKeys[%d] needs kid, alg and jwk", i)
		}
	}
	if l := p.RateLimit; l != nil && (l.Requests <= 0 || l.PerMillis <= 0 || l.Burst <= 0) {
		bad("policy.rateLimit: requests, perMillis and burst must be positive")
	}
	return errors.Join(append(errs, validateKeys(b.Keys))...)
}

// validateKeys reports every problem of a list of key entries.
func validateKeys(keys []Key) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	checkLimit := func(field string, l *RateLimit) {
		if l != nil && (l.Requests <= 0 || l.PerMillis <= 0 || l.Burst <= 0) {
			bad("%s: requests, perMillis and burst must be positive", field)
		}
	}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		if k.KeyID == "" {
			bad("keys[%d] has no keyID", i)
		}
		if seen[k.KeyID] {
			bad("keys[%d]: keyID %s appears twice", i, k.KeyID)
		}
		seen[k.KeyID] = true
		if len(k.Secrets) == 0 {
			bad("keys[%d] (%s) has no secret digest", i, k.KeyID)
		}
		for _, s := range k.Secrets {
			if len(s.Digest) != sha256.Size {
				bad("keys[%d] (%s) has a digest that is not HMAC-SHA256", i, k.KeyID)
			}
		}
		for _, c := range k.AllowedCIDRs {
			if _, err := netip.ParsePrefix(c); err != nil {
				bad("keys[%d].allowedCIDRs: %q is not a CIDR block", i, c)
			}
		}
		checkLimit(fmt.Sprintf("keys[%d].rateLimit", i), k.RateLimit)
		for j, c := range k.Clients {
			checkLimit(fmt.Sprintf("keys[%d].clients[%d].rateLimit", i, j), c.RateLimit)
		}
	}
	return errors.Join(errs...)
}

// Lookup returns the entry of keyID, or nil when b does not carry that key.
func (b *Bundle) Lookup(keyID string) *Key {
	for i := range b.Keys {
		if b.Keys[i].KeyID == keyID {
			return &b.Keys[i]
		}
	}
	return nil
}

// Carries reports whether k lists digest among its secret digests, compared
// in constant time. It says nothing about expiry: a sidecar still refuses a
// previous secret after its ExpiresAt, and the whole key after k.ExpiresAt.
func (k *Key) Carries(digest []byte) bool {
	found := false
	for _, s := range k.Secrets {
		if hmac.Equal(s.Digest, digest) {
			found = true
		}
	}
	return found
}

// Carries reports whether b lets keyID authenticate with the secret whose
// digest (Digest(b.HashKey, secret)) is given: the question "is this key, at
// this secret, in what the sidecars read". The operator asks it before it
// calls an ApiKey Ready; kubectl-keygate asks it of a published bundle.
func (b *Bundle) Carries(keyID string, digest []byte) bool {
	k := b.Lookup(keyID)
	return k != nil && k.Carries(digest)
}
