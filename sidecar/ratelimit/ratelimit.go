// Package ratelimit counts authentication failures per key ID and per client
// address and refuses further attempts once a limit trips, in bounded memory.
package ratelimit

import (
	"crypto/sha256"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limiter counts failures in fixed windows. Safe for concurrent use.
type Limiter struct {
	max     int
	window  time.Duration
	maxKeys int

	mu      sync.Mutex
	entries map[string]*entry
	// size mirrors len(entries) so the common case, no failures on record,
	// costs one atomic load and no lock.
	size atomic.Int64
}

type entry struct {
	start time.Time
	count int
}

// New returns a limiter allowing max failures per window for each subject,
// tracking at most maxKeys subjects.
func New(max int, window time.Duration, maxKeys int) *Limiter {
	return &Limiter{max: max, window: window, maxKeys: maxKeys, entries: make(map[string]*entry)}
}

// maxSubject is the longest subject kept as is; longer ones (they are chosen
// by clients: a key ID may fill a 32 KiB header) are kept as their SHA-256.
const maxSubject = 64

func subjectKey(s string) string {
	if len(s) <= maxSubject {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "\x00" + string(sum[:])
}

// Blocked reports whether subject is over its limit and for how long.
func (l *Limiter) Blocked(subject string, now time.Time) (bool, time.Duration) {
	if l == nil || subject == "" || l.size.Load() == 0 {
		return false, 0
	}
	subject = subjectKey(subject)
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[subject]
	if e == nil {
		return false, 0
	}
	end := e.start.Add(l.window)
	if !now.Before(end) {
		delete(l.entries, subject)
		l.size.Store(int64(len(l.entries)))
		return false, 0
	}
	if e.count >= l.max {
		return true, end.Sub(now)
	}
	return false, 0
}

// Fail records one failure of subject.
func (l *Limiter) Fail(subject string, now time.Time) {
	if l == nil || subject == "" {
		return
	}
	subject = subjectKey(subject)
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[subject]
	if e != nil && !now.Before(e.start.Add(l.window)) {
		e.start, e.count = now, 0
	}
	if e == nil {
		if len(l.entries) >= l.maxKeys {
			l.evict(now)
		}
		e = &entry{start: now}
		// The map keeps its own copy: a caller's subject may alias a
		// buffer it reuses.
		l.entries[strings.Clone(subject)] = e
		l.size.Store(int64(len(l.entries)))
	}
	e.count++
}

// evict drops expired entries, then, if still full, arbitrary ones down to
// three quarters of the capacity. Called with mu held.
func (l *Limiter) evict(now time.Time) {
	for k, e := range l.entries {
		if !now.Before(e.start.Add(l.window)) {
			delete(l.entries, k)
		}
	}
	for k := range l.entries {
		if len(l.entries) < l.maxKeys*3/4+1 {
			break
		}
		delete(l.entries, k)
	}
	l.size.Store(int64(len(l.entries)))
}

// Len is the number of tracked subjects.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}
