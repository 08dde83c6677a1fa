// Package bundletest builds policy bundles for tests and benchmarks: a policy,
// signing keys and API keys whose secrets the test knows.
package bundletest

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
)

// Fixture is a bundle under construction plus the clear secrets of its keys.
type Fixture struct {
	Bundle  bundle.Bundle
	Secrets map[string]string
}

// New returns a fixture signing with alg and a permissive default policy:
// Basic on, Bearer scheme, every grant except password, token paths
// /api/token, /oauth/token and /token, defaultAction Deny, no rules.
func New(alg string) *Fixture {
	hk := make([]byte, 32)
	_, _ = rand.Read(hk)
	sk, err := bundle.NewSigningKey(alg, time.Now().Add(-time.Hour))
	if err != nil {
		panic(err)
	}
	return &Fixture{
		Bundle: bundle.Bundle{
			Version: bundle.FormatVersion,
			Policy: bundle.Policy{
				Namespace: "default", Name: "test-api",
				Issuer: "https://test.example.com", Audience: "test-api",
				TokenTTLSeconds: 3600, ClientTokenTTLSeconds: 900,
				Basic: true, BearerSchemes: []string{"Bearer"},
				Grants:        []string{"api_key", "client_credentials", "client_token"},
				TokenPaths:    []string{"/api/token", "/oauth/token", "/token"},
				PublicPaths:   []string{"/healthz"},
				DefaultAction: "Deny",
			},
			HashKey:     hk,
			SigningKeys: []bundle.SigningKey{sk},
		},
		Secrets: map[string]string{},
	}
}

// Secret returns a fresh 43-character alphanumeric secret.
func Secret() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 43)
	for i := range b {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		b[i] = alphabet[n.Int64()]
	}
	return string(b)
}

// KeyOption changes a key.
type KeyOption func(*bundle.Key)

// WithCIDRs restricts a key to blocks.
func WithCIDRs(cidrs ...string) KeyOption { return func(k *bundle.Key) { k.AllowedCIDRs = cidrs } }

// WithClient adds a sub-client.
func WithClient(key string, perms ...string) KeyOption {
	return func(k *bundle.Key) { k.Clients = append(k.Clients, bundle.Client{Key: key, Permissions: perms}) }
}

// WithRateLimit sets the key's request rate limit.
func WithRateLimit(requests int64, per time.Duration, burst int64) KeyOption {
	return func(k *bundle.Key) {
		k.RateLimit = &bundle.RateLimit{Requests: requests, PerMillis: per.Milliseconds(), Burst: burst}
	}
}

// WithClientRateLimit sets the rate limit of the key's client (added before).
func WithClientRateLimit(client string, requests int64, per time.Duration, burst int64) KeyOption {
	return func(k *bundle.Key) {
		for i := range k.Clients {
			if k.Clients[i].Key == client {
				k.Clients[i].RateLimit = &bundle.RateLimit{Requests: requests, PerMillis: per.Milliseconds(), Burst: burst}
			}
		}
	}
}

// WithExpiry sets the key's expiry.
func WithExpiry(t time.Time) KeyOption { return func(k *bundle.Key) { k.ExpiresAt = &t } }

// AddKey adds a key with a fresh secret and returns the secret.
func (f *Fixture) AddKey(keyID string, perms []string, opts ...KeyOption) string {
	secret := Secret()
	k := bundle.Key{Name: keyID, KeyID: keyID, Permissions: perms,
		Secrets: []bundle.SecretDigest{{Digest: bundle.Digest(f.Bundle.HashKey, secret), Version: 1}}}
	for _, o := range opts {
		o(&k)
	}
	f.Bundle.Keys = append(f.Bundle.Keys, k)
	f.Secrets[keyID] = secret
	return secret
}

// RotateSecret gives keyID a new current secret; the old one stays valid
// until grace ends. It returns the new secret.
func (f *Fixture) RotateSecret(keyID string, graceEnd time.Time) string {
	for i := range f.Bundle.Keys {
		k := &f.Bundle.Keys[i]
		if k.KeyID != keyID {
			continue
		}
		secret := Secret()
		old := k.Secrets[0]
		old.ExpiresAt = &graceEnd
		k.Secrets = []bundle.SecretDigest{{Digest: bundle.Digest(f.Bundle.HashKey, secret), Version: old.Version + 1}, old}
		f.Secrets[keyID] = secret
		return secret
	}
	panic("no key " + keyID)
}

// RotateSigningKey makes a new current signing key; the old one verifies
// until retiresAt.
func (f *Fixture) RotateSigningKey(alg string, retiresAt time.Time) {
	sk, err := bundle.NewSigningKey(alg, time.Now())
	if err != nil {
		panic(err)
	}
	old := f.Bundle.SigningKeys[0]
	old.RetiresAt = &retiresAt
	f.Bundle.SigningKeys = []bundle.SigningKey{sk, old}
}

// JSON encodes the bundle (and validates it).
func (f *Fixture) JSON() []byte {
	if err := f.Bundle.Validate(); err != nil {
		panic(fmt.Sprintf("invalid test bundle: %v", err))
	}
	b, err := json.Marshal(&f.Bundle)
	if err != nil {
		panic(err)
	}
	return b
}

// WriteFile writes the bundle to path atomically.
func (f *Fixture) WriteFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, f.JSON(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// AddScaleKeys adds n keys with random key IDs (apk- and 20 letters and
// digits, like the operator's) and the given permissions, as a large policy
// has them. Their secrets are not kept (Secrets has no entry for them).
func (f *Fixture) AddScaleKeys(n int, perms []string) {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	raw := make([]byte, 20)
	for i := range n {
		_, _ = rand.Read(raw)
		id := []byte("apk-")
		for _, c := range raw {
			id = append(id, alphabet[int(c)%len(alphabet)])
		}
		f.Bundle.Keys = append(f.Bundle.Keys, bundle.Key{Name: fmt.Sprintf("scale-%06d", i), KeyID: string(id), Permissions: perms,
			Secrets: []bundle.SecretDigest{{Digest: bundle.Digest(f.Bundle.HashKey, string(raw)), Version: 1}}})
	}
}

// Sharded returns the fixture as a v2 bundle of policy's count shards: the
// index and the shard documents, as the operator writes them.
func (f *Fixture) Sharded(policy string, count int) (bundle.Bundle, []bundle.Shard) {
	index := f.Bundle
	index.Version, index.Keys, index.Shards = bundle.FormatVersionV2, nil, bundle.ShardNames(policy, count)
	docs := make([]bundle.Shard, count)
	for i := range docs {
		docs[i] = bundle.Shard{Version: bundle.ShardFormatVersion, Count: count, Index: i, HashKeyID: bundle.HashKeyID(f.Bundle.HashKey), Keys: []bundle.Key{}}
	}
	for _, k := range f.Bundle.Keys {
		i := bundle.ShardOf(k.KeyID, count)
		docs[i].Keys = append(docs[i].Keys, k)
	}
	return index, docs
}
