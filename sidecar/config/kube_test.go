package config

import (
	"io"
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

func bundleSecret(rv string, data []byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "keygate-p", ResourceVersion: rv},
		Data: map[string][]byte{bundle.SecretDataKey: data}}
}

// The watch and the probe both deliver the bundle Secret. A probe answer
// older than what the watch already applied (the version before a key was
// disabled) must not put the disabled key back in force: nothing would
// correct it until the Secret next changed.
func TestOlderBundleVersionIsNotApplied(t *testing.T) {
	f := bundletest.New("EdDSA")
	f.AddKey("apk-kept", nil)
	f.AddKey("apk-disabled", nil)
	withKey := f.JSON()
	f.Bundle.Keys = f.Bundle.Keys[:1]
	withoutKey := f.JSON()

	k := &Kubernetes{Store: &Store{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	k.applySecret(bundleSecret("100", withKey))
	k.applySecret(bundleSecret("205", withoutKey)) // the watch: the key was disabled
	k.applySecret(bundleSecret("100", withKey))    // the probe's late answer
	if rt := k.Store.Load(); rt.Key("apk-disabled") != nil {
		t.Fatal("an older bundle version replaced a newer one: the disabled key is back in force")
	}
	k.applySecret(bundleSecret("99", withKey))
	if rt := k.Store.Load(); rt.Key("apk-disabled") != nil {
		t.Fatal("resourceVersions compare as integers, not strings (\"99\" > \"205\" as text)")
	}
	k.applySecret(bundleSecret("1000", withKey)) // a later version re-adds it (enabled again)
	if rt := k.Store.Load(); rt.Key("apk-disabled") == nil {
		t.Fatal("a newer bundle version was not applied")
	}
}

func TestNewerVersion(t *testing.T) {
	for _, c := range []struct {
		rv, cur string
		want    bool
	}{
		{"5", "", true},
		{"6", "5", true},
		{"5", "5", false},
		{"4", "5", false},
		{"10", "9", true},
		{"9", "10", false},
		{"b", "a", true}, // not comparable: applied in arrival order
		{"a", "a", false},
	} {
		if got := newerVersion(c.rv, c.cur); got != c.want {
			t.Errorf("newerVersion(%q, %q) = %v, want %v", c.rv, c.cur, got, c.want)
		}
	}
}
