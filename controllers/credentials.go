package controllers

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Data keys of a credentials Secret: ready-to-use entries for the API consumer.
const (
	CredentialsKeyID         = "key"
	CredentialsSecret        = "secret"
	CredentialsAuthorization = "authorization"
)

// Annotations of a credentials Secret. They hold the operator's bookkeeping so
// that it survives restarts and lost status: never a secret in clear, only the
// keyed digest of the previous secret during its grace period.
const (
	annotationSecretVersion     = "keygate.dev/secret-version"
	annotationRotatedAt         = "keygate.dev/rotated-at"
	annotationChecksum          = "keygate.dev/checksum"
	annotationRotateHandled     = "keygate.dev/rotate-handled"
	annotationPreviousDigest    = "keygate.dev/previous-digest"
	annotationPreviousVersion   = "keygate.dev/previous-version"
	annotationPreviousExpiresAt = "keygate.dev/previous-expires-at"
	annotationPreviousHashKey   = "keygate.dev/previous-hash-key"
)

const (
	keyIDPrefix  = "apk-"
	keyIDLength  = 20
	secretLength = 43 // 43 × log2(62) ≈ 256.03 bits
	alphanumeric = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
)

// randomAlphanumeric returns n characters drawn uniformly from [A-Za-z0-9]
// with crypto/rand (rejection sampling, no modulo bias).
func randomAlphanumeric(n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/4)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("read random bytes: %w", err)
		}
		for _, b := range buf {
			if b >= 248 { // 248 = 4 × 62
				continue
			}
			out = append(out, alphanumeric[b%62])
			if len(out) == n {
				break
			}
		}
	}
	return string(out), nil
}

func newKeyID() (string, error) {
	s, err := randomAlphanumeric(keyIDLength)
	if err != nil {
		return "", fmt.Errorf("generate key ID: %w", err)
	}
	return keyIDPrefix + s, nil
}

func newSecret() (string, error) {
	s, err := randomAlphanumeric(secretLength)
	if err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return s, nil
}

// credentialsSecretName is the Secret an ApiKey's credentials go to.
func credentialsSecretName(key *keygatev1.ApiKey) string {
	if key.Spec.SecretName != "" {
		return key.Spec.SecretName
	}
	return key.Name + "-credentials"
}

// basicAuthorization is the ready Authorization header value.
func basicAuthorization(keyID, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(keyID+":"+secret))
}

// checksum detects hand edits of the key ID or secret. It is an unkeyed
// SHA-256 of a 256-bit random secret, so it reveals nothing usable.
func checksum(keyID, secret string) string {
	sum := sha256.Sum256([]byte("keygate.dev/credentials/v1\x00" + keyID + "\x00" + secret))
	return hex.EncodeToString(sum[:])
}

// credentials is what the operator reads back from a credentials Secret.
type credentials struct {
	KeyID         string
	Secret        string
	Version       int64
	RotatedAt     time.Time
	RotateHandled string
	// Intact is false when the Secret was edited by hand (or is not ours).
	Intact bool
	// Previous is the digest of the secret before the last rotation, while
	// its grace period runs.
	Previous *previousSecret
}

type previousSecret struct {
	Digest    []byte
	Version   int64
	ExpiresAt time.Time
	// HashKeyID identifies the policy hash key the digest was made with
	// (hashKeyID); a digest made for another policy, or for a deleted and
	// re-created one, is worthless and left out of the bundle.
	HashKeyID string
}

// hashKeyID is a short public fingerprint of a policy's hash key.
func hashKeyID(hashKey []byte) string {
	sum := sha256.Sum256(append([]byte("keygate.dev/hash-key-id\x00"), hashKey...))
	return hex.EncodeToString(sum[:8])
}

// readCredentials parses a credentials Secret, as the API server holds it or
// as the cache keeps it (foldCredentials). It never fails: anything that
// does not add up makes the result not Intact.
func readCredentials(s *corev1.Secret) credentials {
	c := credentials{
		KeyID:         credentialsData(s, CredentialsKeyID),
		Secret:        credentialsData(s, CredentialsSecret),
		RotateHandled: credentialsAnnotation(s, annotationRotateHandled),
	}
	var err error
	c.Version, err = strconv.ParseInt(credentialsAnnotation(s, annotationSecretVersion), 10, 64)
	versionOK := err == nil && c.Version > 0
	c.RotatedAt, err = time.Parse(time.RFC3339, credentialsAnnotation(s, annotationRotatedAt))
	rotatedOK := err == nil
	sumOK := subtle.ConstantTimeCompare([]byte(checksum(c.KeyID, c.Secret)), []byte(credentialsAnnotation(s, annotationChecksum))) == 1
	c.Intact = versionOK && rotatedOK && sumOK && c.KeyID != "" && len(c.Secret) >= secretLength
	if d, err := base64.StdEncoding.DecodeString(credentialsAnnotation(s, annotationPreviousDigest)); err == nil && len(d) == sha256.Size {
		exp, errT := time.Parse(time.RFC3339, credentialsAnnotation(s, annotationPreviousExpiresAt))
		v, errV := strconv.ParseInt(credentialsAnnotation(s, annotationPreviousVersion), 10, 64)
		if errT == nil && errV == nil {
			c.Previous = &previousSecret{Digest: d, Version: v, ExpiresAt: exp, HashKeyID: credentialsAnnotation(s, annotationPreviousHashKey)}
		}
	}
	return c
}

// writeCredentials sets the data and bookkeeping annotations of s from c.
func writeCredentials(s *corev1.Secret, c credentials) {
	s.Type = corev1.SecretTypeOpaque
	s.Data = map[string][]byte{
		CredentialsKeyID:         []byte(c.KeyID),
		CredentialsSecret:        []byte(c.Secret),
		CredentialsAuthorization: []byte(basicAuthorization(c.KeyID, c.Secret)),
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[annotationSecretVersion] = strconv.FormatInt(c.Version, 10)
	s.Annotations[annotationRotatedAt] = c.RotatedAt.UTC().Format(time.RFC3339)
	s.Annotations[annotationChecksum] = checksum(c.KeyID, c.Secret)
	if c.RotateHandled != "" {
		s.Annotations[annotationRotateHandled] = c.RotateHandled
	} else {
		delete(s.Annotations, annotationRotateHandled)
	}
	if c.Previous != nil {
		s.Annotations[annotationPreviousDigest] = base64.StdEncoding.EncodeToString(c.Previous.Digest)
		s.Annotations[annotationPreviousVersion] = strconv.FormatInt(c.Previous.Version, 10)
		s.Annotations[annotationPreviousExpiresAt] = c.Previous.ExpiresAt.UTC().Format(time.RFC3339)
		s.Annotations[annotationPreviousHashKey] = c.Previous.HashKeyID
	} else {
		delete(s.Annotations, annotationPreviousHashKey)
		delete(s.Annotations, annotationPreviousDigest)
		delete(s.Annotations, annotationPreviousVersion)
		delete(s.Annotations, annotationPreviousExpiresAt)
	}
}
