package revocation

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

func TestFileStoreRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rev.json")
	set := NewSet()
	f := &File{Path: path, Set: set}
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	if err := f.Revoke(context.Background(), "jti-1", exp); err != nil {
		t.Fatal(err)
	}
	if err := f.Revoke(context.Background(), "jti-2", exp); err != nil {
		t.Fatal(err)
	}
	if !set.Revoked("jti-1") || !set.Revoked("jti-2") || set.Revoked("jti-3") {
		t.Fatal("set not updated")
	}
	m, err := ReadFile(path)
	if err != nil || len(m) != 2 || !m["jti-1"].Equal(exp) {
		t.Fatalf("file: %v %v", m, err)
	}
}

func TestReplaceKeepsLocalUntilSeen(t *testing.T) {
	s := NewSet()
	s.Add("local", time.Now().Add(time.Hour))
	s.Replace(map[string]time.Time{"remote": time.Now().Add(time.Hour)})
	if !s.Revoked("local") || !s.Revoked("remote") {
		t.Fatal("an entry was lost")
	}
	if got := Parse(map[string]string{"a": "2027-01-01T00:00:00Z", "b": "garbage"}); len(got) != 2 {
		t.Fatalf("Parse dropped an entry: %v", got)
	}
}
