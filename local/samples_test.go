package local

import (
	"path/filepath"
	"testing"
	"time"
)

// TestSamplesDoNotExpireSoon: make run waits for every sample ApiKey to be
// Ready, and an expired key never is; a sample expiresAt within a year is
// flagged here, with the file to edit, before it breaks make run.
func TestSamplesDoNotExpireSoon(t *testing.T) {
	objs, err := readSamples(filepath.Join(configDir(t), "samples"))
	if err != nil {
		t.Fatal(err)
	}
	keys := 0
	for _, u := range objs {
		if u.GetKind() != "ApiKey" {
			continue
		}
		keys++
		s, ok := u.Object["spec"].(map[string]any)["expiresAt"].(string)
		if !ok {
			continue
		}
		at, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Errorf("ApiKey %s: expiresAt %q: %v", u.GetName(), s, err)
			continue
		}
		if time.Until(at) < 365*24*time.Hour {
			t.Errorf("config/samples: ApiKey %s expires at %s, within a year: move it on (make run needs every sample key Ready)", u.GetName(), s)
		}
	}
	if keys < 4 {
		t.Errorf("%d sample ApiKeys, want one per seed platform at least", keys)
	}
}
