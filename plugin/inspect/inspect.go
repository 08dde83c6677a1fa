// Package inspect turns keygate's objects into what `kubectl keygate status`
// and `rotate --wait` report: pure functions of (objects, bundle, now), with
// table tests, the way controllers/apikey_decisions.go decides rotations.
package inspect

import (
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers/podinject"
)

// Bundle carriage of a key, as status reports it.
const (
	// InBundleYes: the bundle holds the key's current secret version.
	InBundleYes = "yes"
	// InBundleStale: the bundle holds the key with an older secret version.
	InBundleStale = "stale"
	// InBundleNo: the bundle does not hold the key (not Ready, disabled, expired).
	InBundleNo = "no"
	// InBundleUnknown: no bundle could be read.
	InBundleUnknown = "unknown"
)

// KeyStatus is one line of `status`.
type KeyStatus struct {
	Namespace     string `json:"namespace"`
	Name          string `json:"name"`
	Policy        string `json:"policy"`
	Ready         string `json:"ready"`
	Reason        string `json:"reason,omitempty"`
	Message       string `json:"message,omitempty"`
	KeyID         string `json:"keyID,omitempty"`
	SecretVersion int64  `json:"secretVersion"`
	// LastRotation is when the current secret was made.
	LastRotation *time.Time `json:"lastRotation,omitempty"`
	// PreviousSecretExpiresAt ends the grace of the previous secret; GraceLeft
	// is what remains of it (0 when over or none).
	PreviousSecretExpiresAt *time.Time    `json:"previousSecretExpiresAt,omitempty"`
	GraceLeft               time.Duration `json:"-"`
	GraceLeftSeconds        int64         `json:"graceLeftSeconds"`
	ExpiresAt               *time.Time    `json:"expiresAt,omitempty"`
	Disabled                bool          `json:"disabled"`
	// InBundle is InBundleYes, InBundleStale, InBundleNo or InBundleUnknown.
	InBundle string `json:"inBundle"`
	// BundleVersion is the secret version the bundle holds (0 when none).
	BundleVersion int64 `json:"bundleVersion,omitempty"`
}

// FindKey returns the bundle's entry for keyID (bundle.Lookup), or nil when
// there is no bundle.
func FindKey(b *bundle.Bundle, keyID string) *bundle.Key {
	if b == nil || keyID == "" {
		return nil
	}
	return b.Lookup(keyID)
}

// Key describes an ApiKey; b is its policy's bundle, nil when unreadable.
func Key(key *keygatev1.ApiKey, b *bundle.Bundle, now time.Time) KeyStatus {
	st := key.Status
	ks := KeyStatus{
		Namespace: key.Namespace, Name: key.Name, Policy: key.Spec.PolicyRef.Name,
		Ready: "Unknown", KeyID: st.KeyID, SecretVersion: st.SecretVersion,
		Disabled: key.Spec.Disabled, InBundle: InBundleUnknown,
	}
	if c := meta.FindStatusCondition(st.Conditions, keygatev1.ConditionReady); c != nil {
		ks.Ready, ks.Reason, ks.Message = string(c.Status), c.Reason, c.Message
	}
	if st.LastRotationTime != nil {
		t := st.LastRotationTime.Time
		ks.LastRotation = &t
	}
	if st.PreviousSecretExpiresAt != nil {
		t := st.PreviousSecretExpiresAt.Time
		ks.PreviousSecretExpiresAt = &t
		if left := t.Sub(now); left > 0 {
			ks.GraceLeft = left.Truncate(time.Second)
			ks.GraceLeftSeconds = int64(ks.GraceLeft / time.Second)
		}
	}
	if st.ExpiresAt != nil {
		t := st.ExpiresAt.Time
		ks.ExpiresAt = &t
	} else if key.Spec.ExpiresAt != nil {
		t := key.Spec.ExpiresAt.Time
		ks.ExpiresAt = &t
	}
	if b != nil {
		ks.InBundle = InBundleNo
		if k := FindKey(b, st.KeyID); k != nil && len(k.Secrets) > 0 {
			ks.BundleVersion = k.Secrets[0].Version
			ks.InBundle = InBundleStale
			if k.Secrets[0].Version == st.SecretVersion {
				ks.InBundle = InBundleYes
			}
		}
	}
	return ks
}

// CarriesSecret reports whether the bundle lets keyID authenticate with
// secret (bundle.Carries, constant-time digest comparison).
func CarriesSecret(b *bundle.Bundle, keyID, secret string) bool {
	return b != nil && secret != "" && b.Carries(keyID, bundle.Digest(b.HashKey, secret))
}

// SigningKeyStatus describes one signing key of a bundle.
type SigningKeyStatus struct {
	KeyID     string        `json:"kid"`
	Algorithm string        `json:"alg"`
	CreatedAt time.Time     `json:"createdAt"`
	Age       time.Duration `json:"-"`
	// AgeSeconds is Age in seconds (JSON and YAML output).
	AgeSeconds int64 `json:"ageSeconds"`
	// RetiresAt is set on previous keys, which verify but no longer sign.
	RetiresAt *time.Time `json:"retiresAt,omitempty"`
	Current   bool       `json:"current"`
}

// SidecarStatus is one pod of the policy.
type SidecarStatus struct {
	Pod   string `json:"pod"`
	Ready bool   `json:"ready"`
	// Phase is the pod's phase, for pods that are not ready.
	Phase string `json:"phase"`
}

// PolicyStatus is `status -p`.
type PolicyStatus struct {
	Namespace   string             `json:"namespace"`
	Name        string             `json:"name"`
	Ready       string             `json:"ready"`
	Reason      string             `json:"reason,omitempty"`
	Message     string             `json:"message,omitempty"`
	SigningKeys []SigningKeyStatus `json:"signingKeys"`
	ApiKeys     int                `json:"apiKeys"`
	MaxApiKeys  int                `json:"maxApiKeys,omitempty"`
	// BundleKeys is the number of keys the bundle carries (Ready keys).
	BundleKeys  int             `json:"bundleKeys"`
	Revocations int             `json:"revocations"`
	Sidecars    []SidecarStatus `json:"sidecars"`
}

// Policy describes a TokenPolicy from its object, bundle (nil when
// unreadable), the number of ApiKeys naming it, its revocations and its pods.
func Policy(p *keygatev1.TokenPolicy, b *bundle.Bundle, apiKeys int, revocations map[string]string, pods []corev1.Pod, now time.Time) PolicyStatus {
	ps := PolicyStatus{Namespace: p.Namespace, Name: p.Name, Ready: "Unknown", ApiKeys: apiKeys,
		MaxApiKeys: int(p.Spec.MaxApiKeys), Revocations: len(revocations),
		SigningKeys: []SigningKeyStatus{}, Sidecars: []SidecarStatus{}}
	if c := meta.FindStatusCondition(p.Status.Conditions, keygatev1.ConditionReady); c != nil {
		ps.Ready, ps.Reason, ps.Message = string(c.Status), c.Reason, c.Message
	}
	if b != nil {
		ps.BundleKeys = len(b.Keys)
		for i, k := range b.SigningKeys {
			age := now.Sub(k.CreatedAt).Truncate(time.Second)
			ps.SigningKeys = append(ps.SigningKeys, SigningKeyStatus{KeyID: k.KeyID, Algorithm: k.Algorithm,
				CreatedAt: k.CreatedAt, Age: age, AgeSeconds: int64(age / time.Second), RetiresAt: k.RetiresAt, Current: i == 0})
		}
	}
	for _, pod := range SidecarPods(pods, p.Name) {
		ps.Sidecars = append(ps.Sidecars, SidecarStatus{Pod: pod.Name, Ready: SidecarReady(&pod), Phase: string(pod.Status.Phase)})
	}
	return ps
}

// SidecarPods are the pods among pods injected for policy (labelled
// keygate.dev/inject=true, annotated keygate.dev/policy=policy), by name.
func SidecarPods(pods []corev1.Pod, policy string) []corev1.Pod {
	var out []corev1.Pod
	for _, p := range pods {
		if p.Labels[keygatev1.LabelInject] == "true" && p.Annotations[keygatev1.AnnotationPolicy] == policy && p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SidecarContainer is the name of the injected sidecar container.
const SidecarContainer = podinject.ContainerName

// SidecarReady reports whether a pod serves: Ready, and its sidecar
// container (a native sidecar, so an init container) ready when reported.
func SidecarReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
		return false
	}
	ready := false
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if cs.Name == SidecarContainer && !cs.Ready {
			return false
		}
	}
	return ready
}
