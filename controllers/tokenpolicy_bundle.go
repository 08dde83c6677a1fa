package controllers

import (
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

func durationOr(d *metav1.Duration, def time.Duration) time.Duration {
	if d == nil || d.Duration <= 0 {
		return def
	}
	return d.Duration
}

func orDefault[T any](v []T, def ...T) []T {
	if len(v) == 0 {
		return def
	}
	return v
}

func toStrings[T ~string](v []T) []string {
	if v == nil {
		return nil
	}
	out := make([]string, len(v))
	for i, s := range v {
		out[i] = string(s)
	}
	return out
}

// resolvePolicy is the TokenPolicy spec with defaults applied, as the bundle carries it.
func resolvePolicy(p *keygatev1.TokenPolicy) bundle.Policy {
	s := &p.Spec
	basic := true
	if s.Authentication.Basic != nil {
		basic = *s.Authentication.Basic
	}
	out := bundle.Policy{
		Namespace:             p.Namespace,
		Name:                  p.Name,
		Issuer:                s.Issuer,
		Audience:              s.Audience,
		TokenTTLSeconds:       int64(durationOr(s.TokenTTL, time.Hour) / time.Second),
		ClientTokenTTLSeconds: int64(durationOr(s.ClientTokenTTL, 15*time.Minute) / time.Second),
		Basic:                 basic,
		BearerSchemes:         orDefault(s.Authentication.BearerSchemes, "Bearer"),
		APIKeyHeader:          s.Authentication.APIKeyHeader,
		Grants: orDefault(toStrings(s.Grants),
			string(keygatev1.GrantAPIKey), string(keygatev1.GrantClientCredentials), string(keygatev1.GrantClientToken)),
		TokenPaths:     orDefault(toStrings(s.TokenEndpoint.Paths), "/api/token", "/oauth/token", "/token"),
		RequireTLS:     s.TokenEndpoint.RequireTLS,
		AllowedCIDRs:   toStrings(s.AllowedCIDRs),
		TrustedProxies: toStrings(s.TrustedProxies),
		PublicPaths:    orDefault(toStrings(s.PublicPaths), "/healthz"),
		DefaultAction:  string(s.DefaultAction),
	}
	out.RateLimit = bundleRateLimit(s.RateLimit)
	if s.Enforcement == keygatev1.EnforcementAudit {
		out.Enforcement = bundle.EnforcementAudit
	}
	if out.DefaultAction == "" {
		out.DefaultAction = string(keygatev1.ActionDeny)
	}
	for _, r := range s.Rules {
		out.Rules = append(out.Rules, bundle.Rule{Methods: r.Methods, Paths: toStrings(r.Paths), Permission: string(r.Permission)})
	}
	return out
}

// bundleKey is the bundle entry of one accepted ApiKey, from its credentials
// Secret: the digest of the current secret and, during the grace period, of
// the previous one. ok is false when the Secret is missing, not the key's own
// or edited by hand (the ApiKey reconciler then writes a new one).
// c are the Secret's credentials and digest their current secret's digest
// with hashKey (credsPass.read).
func bundleKey(key *keygatev1.ApiKey, secret *corev1.Secret, c *credentials, digest, hashKey []byte, now time.Time) (k bundle.Key, ok bool) {
	if secret == nil || c == nil || !metav1.IsControlledBy(secret, key) {
		return bundle.Key{}, false
	}
	if !c.Intact {
		return bundle.Key{}, false
	}
	k = bundle.Key{
		Name:         key.Name,
		KeyID:        c.KeyID,
		Secrets:      []bundle.SecretDigest{{Digest: digest, Version: c.Version}},
		Permissions:  toStrings(key.Spec.Permissions),
		AllowedCIDRs: toStrings(key.Spec.AllowedCIDRs),
	}
	if prev := livePrevious(c, now); prev != nil && prev.HashKeyID == hashKeyID(hashKey) {
		exp := prev.ExpiresAt.UTC()
		k.Secrets = append(k.Secrets, bundle.SecretDigest{Digest: prev.Digest, Version: prev.Version, ExpiresAt: &exp})
	}
	for _, cl := range key.Spec.Clients {
		k.Clients = append(k.Clients, bundle.Client{Key: cl.Key, Permissions: toStrings(cl.Permissions), RateLimit: bundleRateLimit(cl.RateLimit)})
	}
	k.RateLimit = bundleRateLimit(key.Spec.RateLimit)
	if key.Spec.ExpiresAt != nil {
		exp := key.Spec.ExpiresAt.UTC()
		k.ExpiresAt = &exp
	}
	return k, true
}

// wakeups are the future times at which a key's bundle entry changes; c
// are its credentials (nil when it has none).
func keyWakeups(key *keygatev1.ApiKey, c *credentials) []time.Time {
	var times []time.Time
	if key.Spec.ExpiresAt != nil {
		times = append(times, key.Spec.ExpiresAt.Time)
	}
	if c != nil && c.Previous != nil {
		times = append(times, c.Previous.ExpiresAt)
	}
	return times
}

func sortKeys(keys []bundle.Key) {
	sort.Slice(keys, func(i, j int) bool { return keys[i].KeyID < keys[j].KeyID })
}

// bundleRateLimit is a rate limit with its defaults applied: per 1s, burst
// the number of requests.
func bundleRateLimit(l *keygatev1.RateLimit) *bundle.RateLimit {
	if l == nil || l.Requests <= 0 {
		return nil
	}
	out := &bundle.RateLimit{Requests: int64(l.Requests), PerMillis: durationOr(l.Per, time.Second).Milliseconds(), Burst: int64(l.Requests)}
	if l.Burst != nil && *l.Burst > 0 {
		out.Burst = int64(*l.Burst)
	}
	return out
}
