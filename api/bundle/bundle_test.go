package bundle

import (
	"testing"
)

func TestCarries(t *testing.T) {
	hashKey := []byte("0123456789abcdef0123456789abcdef")
	current, previous, other := Digest(hashKey, "new-secret"), Digest(hashKey, "old-secret"), Digest(hashKey, "unknown")
	b := &Bundle{Keys: []Key{
		{KeyID: "apk-a", Secrets: []SecretDigest{{Digest: current, Version: 2}, {Digest: previous, Version: 1}}},
		{KeyID: "apk-b", Secrets: []SecretDigest{{Digest: other, Version: 1}}},
	}}
	for _, tc := range []struct {
		name   string
		keyID  string
		digest []byte
		want   bool
	}{
		{"current secret", "apk-a", current, true},
		{"previous secret in its grace period", "apk-a", previous, true},
		{"digest of another key", "apk-a", other, false},
		{"unknown key", "apk-c", current, false},
		{"empty digest", "apk-a", nil, false},
		{"truncated digest", "apk-a", current[:16], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := b.Carries(tc.keyID, tc.digest); got != tc.want {
				t.Errorf("Carries(%s) = %v, want %v", tc.keyID, got, tc.want)
			}
		})
	}
	if b.Lookup("apk-b") != &b.Keys[1] || b.Lookup("apk-x") != nil {
		t.Errorf("Lookup returned the wrong entry")
	}
}
