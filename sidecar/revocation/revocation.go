// Package revocation keeps the set of revoked token IDs (jti → expiry) in
// force and persists new revocations: to the revocations ConfigMap in
// Kubernetes mode, to a JSON file in file mode.
package revocation

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
)

// Set is the revoked token IDs in force. Reads are lock-free.
type Set struct {
	m       atomic.Pointer[map[string]time.Time]
	mu      sync.Mutex // serialises writers
	version atomic.Uint64
}

// NewSet returns an empty set.
func NewSet() *Set {
	s := &Set{}
	m := map[string]time.Time{}
	s.m.Store(&m)
	return s
}

// Revoked reports whether jti is revoked.
func (s *Set) Revoked(jti string) bool {
	_, ok := (*s.m.Load())[jti]
	return ok
}

// Len is the number of entries.
func (s *Set) Len() int { return len(*s.m.Load()) }

// Replace installs the entries of a freshly read source, keeping entries added
// locally that the source does not show yet (a watch may lag a patch).
func (s *Set) Replace(entries map[string]time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A token verifies until exp + bundle.TokenLeeway: keep its entry as long.
	now := time.Now().Add(-bundle.TokenLeeway)
	next := make(map[string]time.Time, len(entries))
	maps.Copy(next, entries)
	for k, v := range *s.m.Load() {
		if _, ok := next[k]; !ok && v.After(now) {
			next[k] = v
		}
	}
	s.m.Store(&next)
	s.version.Add(1)
}

// Add adds one entry.
func (s *Set) Add(jti string, exp time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.m.Load()
	if _, ok := cur[jti]; ok {
		return
	}
	next := make(map[string]time.Time, len(cur)+1)
	maps.Copy(next, cur)
	next[jti] = exp
	s.m.Store(&next)
	s.version.Add(1)
}

// Parse decodes ConfigMap-style data (jti → RFC 3339 expiry), skipping
// entries it cannot read (a token with an unreadable expiry stays revoked
// for a day).
func Parse(data map[string]string) map[string]time.Time {
	out := make(map[string]time.Time, len(data))
	for k, v := range data {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			t = time.Now().Add(24 * time.Hour)
		}
		out[k] = t
	}
	return out
}

// Store persists a revocation so every replica, and a restarted sidecar,
// refuses the token.
type Store interface {
	Revoke(ctx context.Context, jti string, exp time.Time) error
}

// Memory keeps revocations in the Set only (file mode without a file).
type Memory struct{ Set *Set }

// Revoke implements Store.
func (m Memory) Revoke(_ context.Context, jti string, exp time.Time) error {
	m.Set.Add(jti, exp)
	return nil
}

// File persists revocations as a JSON object in a file, replaced atomically.
type File struct {
	Path string
	Set  *Set
	mu   sync.Mutex
}

// ReadFile reads a revocations file; a missing file is an empty set.
func ReadFile(path string) (map[string]time.Time, error) {
	b, err := os.ReadFile(filepath.Clean(path)) // #nosec G304 -- path comes from the --revocations-file flag
	if os.IsNotExist(err) {
		return map[string]time.Time{}, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return map[string]time.Time{}, nil
	}
	var data map[string]string
	if err := json.Unmarshal(b, &data); err != nil {
		return nil, fmt.Errorf("decode revocations file %s: %w", path, err)
	}
	return Parse(data), nil
}

// Revoke implements Store.
func (f *File) Revoke(_ context.Context, jti string, exp time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, err := ReadFile(f.Path)
	if err != nil {
		return err
	}
	data := make(map[string]string, len(cur)+1)
	for k, v := range cur {
		data[k] = v.UTC().Format(time.RFC3339)
	}
	data[jti] = exp.UTC().Format(time.RFC3339)
	b, err := json.MarshalIndent(data, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.Path), ".revocations-*")
	if err != nil {
		return fmt.Errorf("write revocations file: %w", err)
	}
	// Cleans up after a failure; after the rename the temporary file is gone
	// and Remove fails harmlessly, so its error is ignored.
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close() // the write error is the one to report; the file is removed anyway
		return fmt.Errorf("write revocations file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write revocations file: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.Path); err != nil {
		return fmt.Errorf("write revocations file: %w", err)
	}
	f.Set.Add(jti, exp)
	return nil
}

// WatchFile keeps set loaded from a revocations file, polling every interval.
func WatchFile(ctx context.Context, path string, set *Set, interval time.Duration, onErr func(error)) {
	var lastMod time.Time
	var lastSize int64 = -1
	check := func() {
		fi, err := os.Stat(path)
		if os.IsNotExist(err) {
			return
		}
		if err != nil {
			onErr(err)
			return
		}
		if fi.ModTime().Equal(lastMod) && fi.Size() == lastSize {
			return
		}
		m, err := ReadFile(path)
		if err != nil {
			onErr(err)
			return
		}
		lastMod, lastSize = fi.ModTime(), fi.Size()
		set.Replace(m)
	}
	check()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			check()
		}
	}
}
