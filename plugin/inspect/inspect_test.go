package inspect

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

var now = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

type keyOption func(*keygatev1.ApiKey)

func newKey(name string, opts ...keyOption) *keygatev1.ApiKey {
	k := &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
		Spec: keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: "payments"}}}
	for _, o := range opts {
		o(k)
	}
	return k
}

func withStatus(keyID string, version int64) keyOption {
	return func(k *keygatev1.ApiKey) { k.Status.KeyID, k.Status.SecretVersion = keyID, version }
}

func withReady(status metav1.ConditionStatus, reason string) keyOption {
	return func(k *keygatev1.ApiKey) {
		k.Status.Conditions = []metav1.Condition{{Type: keygatev1.ConditionReady, Status: status, Reason: reason}}
	}
}

func withGrace(end time.Time) keyOption {
	return func(k *keygatev1.ApiKey) { k.Status.PreviousSecretExpiresAt = &metav1.Time{Time: end} }
}

func bundleWith(keys ...bundle.Key) *bundle.Bundle {
	return &bundle.Bundle{HashKey: make([]byte, 32), Keys: keys}
}

func entry(keyID string, version int64) bundle.Key {
	return bundle.Key{KeyID: keyID, Secrets: []bundle.SecretDigest{{Version: version}}}
}

func TestKey(t *testing.T) {
	cases := []struct {
		name      string
		key       *keygatev1.ApiKey
		b         *bundle.Bundle
		inBundle  string
		ready     string
		graceLeft time.Duration
	}{
		{"current version in bundle", newKey("a", withStatus("apk-a", 2), withReady("True", "Ready")), bundleWith(entry("apk-a", 2)), InBundleYes, "True", 0},
		{"bundle behind", newKey("a", withStatus("apk-a", 3), withReady("True", "Ready")), bundleWith(entry("apk-a", 2)), InBundleStale, "True", 0},
		{"disabled key left the bundle", newKey("a", withStatus("apk-a", 1), withReady("False", "Disabled")), bundleWith(entry("apk-b", 1)), InBundleNo, "False", 0},
		{"no bundle readable", newKey("a", withStatus("apk-a", 1)), nil, InBundleUnknown, "Unknown", 0},
		{"grace running", newKey("a", withStatus("apk-a", 2), withGrace(now.Add(90*time.Minute+500*time.Millisecond))), bundleWith(entry("apk-a", 2)), InBundleYes, "Unknown", 90 * time.Minute},
		{"grace over", newKey("a", withStatus("apk-a", 2), withGrace(now.Add(-time.Minute))), bundleWith(entry("apk-a", 2)), InBundleYes, "Unknown", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ks := Key(c.key, c.b, now)
			if ks.InBundle != c.inBundle || ks.Ready != c.ready || ks.GraceLeft != c.graceLeft || ks.GraceLeftSeconds != int64(c.graceLeft/time.Second) {
				t.Errorf("got inBundle %q ready %q graceLeft %v; want %q %q %v", ks.InBundle, ks.Ready, ks.GraceLeft, c.inBundle, c.ready, c.graceLeft)
			}
		})
	}
}

func TestCarriesSecret(t *testing.T) {
	b := bundleWith()
	b.HashKey = []byte("0123456789abcdef0123456789abcdef")
	b.Keys = []bundle.Key{{KeyID: "apk-a", Secrets: []bundle.SecretDigest{{Digest: bundle.Digest(b.HashKey, "new"), Version: 2}, {Digest: bundle.Digest(b.HashKey, "old"), Version: 1}}}}
	if !CarriesSecret(b, "apk-a", "new") {
		t.Error("current secret not recognised")
	}
	if CarriesSecret(b, "apk-a", "other") || CarriesSecret(b, "apk-a", "") || CarriesSecret(b, "apk-b", "new") || CarriesSecret(nil, "apk-a", "new") {
		t.Error("an unknown secret, an empty one, another key or no bundle counted as carried")
	}
}

func pod(name, policy string, phase corev1.PodPhase, ready bool, sidecarReady bool) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{keygatev1.LabelInject: "true"},
		Annotations: map[string]string{keygatev1.AnnotationPolicy: policy}}}
	p.Status.Phase, p.Status.PodIP = phase, "10.0.0.1"
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
	p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: SidecarContainer, Ready: sidecarReady}}
	return p
}

func TestPolicy(t *testing.T) {
	retire := now.Add(time.Hour)
	p := &keygatev1.TokenPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"}, Spec: keygatev1.TokenPolicySpec{MaxApiKeys: 40}}
	b := bundleWith(entry("apk-a", 1))
	b.SigningKeys = []bundle.SigningKey{{KeyID: "new", Algorithm: "EdDSA", CreatedAt: now.Add(-time.Hour)},
		{KeyID: "old", Algorithm: "EdDSA", CreatedAt: now.Add(-720 * time.Hour), RetiresAt: &retire}}
	pods := []corev1.Pod{
		pod("b-ready", "payments", corev1.PodRunning, true, true),
		pod("a-starting", "payments", corev1.PodPending, false, false),
		pod("c-sidecar-down", "payments", corev1.PodRunning, true, false),
		pod("other", "billing", corev1.PodRunning, true, true),
	}
	ps := Policy(p, b, 3, map[string]string{"jti1": "x", "jti2": "y"}, pods, now)
	if ps.ApiKeys != 3 || ps.MaxApiKeys != 40 || ps.BundleKeys != 1 || ps.Revocations != 2 {
		t.Errorf("counts: %+v", ps)
	}
	if len(ps.SigningKeys) != 2 || !ps.SigningKeys[0].Current || ps.SigningKeys[1].Current || ps.SigningKeys[1].RetiresAt == nil || ps.SigningKeys[1].Age != 720*time.Hour || ps.SigningKeys[1].AgeSeconds != 720*3600 {
		t.Errorf("signing keys: %+v", ps.SigningKeys)
	}
	want := []SidecarStatus{{"a-starting", false, "Pending"}, {"b-ready", true, "Running"}, {"c-sidecar-down", false, "Running"}}
	if len(ps.Sidecars) != len(want) {
		t.Fatalf("sidecars %+v, want %+v", ps.Sidecars, want)
	}
	for i := range want {
		if ps.Sidecars[i] != want[i] {
			t.Errorf("sidecar %d = %+v, want %+v", i, ps.Sidecars[i], want[i])
		}
	}
}
