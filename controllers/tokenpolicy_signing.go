package controllers

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// The signing Secret keygate-<policy>-signing holds the policy's HMAC key for
// secret digests and its token signing keys. Only the operator reads it; the
// sidecars get both through the bundle.
const (
	signingHashKey = "hashKey"
	signingKeys    = "signingKeys.json"
	hashKeyLength  = 32
)

const defaultSigningRotation = 720 * time.Hour

func signingSecretName(policy string) string { return "keygate-" + policy + "-signing" }

// signingState is the content of a signing Secret.
type signingState struct {
	HashKey []byte
	Keys    []bundle.SigningKey // current first
}

func readSigning(s *corev1.Secret) (signingState, error) {
	st := signingState{HashKey: s.Data[signingHashKey]}
	if raw := s.Data[signingKeys]; len(raw) > 0 {
		if err := json.Unmarshal(raw, &st.Keys); err != nil {
			return signingState{}, fmt.Errorf("decode %s: %w", signingKeys, err)
		}
	}
	return st, nil
}

func writeSigning(s *corev1.Secret, st signingState) error {
	raw, err := json.Marshal(st.Keys)
	if err != nil {
		return fmt.Errorf("encode %s: %w", signingKeys, err)
	}
	s.Type = corev1.SecretTypeOpaque
	s.Data = map[string][]byte{signingHashKey: st.HashKey, signingKeys: raw}
	return nil
}

// signingTTL is how long a retired key must still verify: the longest token TTL.
func signingTTL(p *keygatev1.TokenPolicy) time.Duration {
	return max(durationOr(p.Spec.TokenTTL, time.Hour), durationOr(p.Spec.ClientTokenTTL, 15*time.Minute))
}

func signingAlgorithm(p *keygatev1.TokenPolicy) string {
	if p.Spec.Signing.Algorithm == "" {
		return bundle.AlgEdDSA
	}
	return string(p.Spec.Signing.Algorithm)
}

// signingRotationDue tells whether the current key must be replaced at now:
// there is none, the algorithm changed, or rotationInterval has elapsed.
func signingRotationDue(p *keygatev1.TokenPolicy, st signingState, now time.Time) bool {
	if len(st.Keys) == 0 {
		return true
	}
	cur := st.Keys[0]
	interval := durationOr(p.Spec.Signing.RotationInterval, defaultSigningRotation)
	return cur.Algorithm != signingAlgorithm(p) || !now.Before(cur.CreatedAt.Add(interval))
}

// nextSigning returns the signing state for now: a hash key made once, a new
// current key when rotation is due (the old one retiring after the longest
// token TTL), and retired keys dropped. changed reports whether it differs.
func nextSigning(p *keygatev1.TokenPolicy, st signingState, now time.Time) (next signingState, rotated bool, err error) {
	next = signingState{HashKey: st.HashKey}
	if len(next.HashKey) < hashKeyLength {
		next.HashKey = make([]byte, hashKeyLength)
		if _, err := rand.Read(next.HashKey); err != nil {
			return signingState{}, false, fmt.Errorf("generate hash key: %w", err)
		}
	}
	keys := st.Keys
	if signingRotationDue(p, st, now) {
		k, err := bundle.NewSigningKey(signingAlgorithm(p), now)
		if err != nil {
			return signingState{}, false, err
		}
		retires := now.Add(signingTTL(p)).UTC().Truncate(time.Second).Add(time.Second) // round up
		old := make([]bundle.SigningKey, 0, len(keys))
		for _, o := range keys {
			if o.RetiresAt == nil {
				o.RetiresAt = &retires
			}
			old = append(old, o)
		}
		keys = append([]bundle.SigningKey{k}, old...)
		rotated = true
	}
	for i, k := range keys {
		if i > 0 && k.RetiresAt != nil && !now.Before(*k.RetiresAt) {
			continue
		}
		next.Keys = append(next.Keys, k)
	}
	return next, rotated, nil
}

// nextSigningEvent is when the signing state next needs attention.
func nextSigningEvent(p *keygatev1.TokenPolicy, st signingState) []time.Time {
	if len(st.Keys) == 0 {
		return nil
	}
	times := []time.Time{st.Keys[0].CreatedAt.Add(durationOr(p.Spec.Signing.RotationInterval, defaultSigningRotation))}
	for _, k := range st.Keys[1:] {
		if k.RetiresAt != nil {
			times = append(times, *k.RetiresAt)
		}
	}
	return times
}
