// Package quota enforces per-key request rate limits: one token bucket per
// subject (a key, a key's client, a key's token requests), kept as a
// generic cell rate (GCRA) "theoretical arrival time", in integer
// nanoseconds, so decisions are exact at the boundary, in bounded memory.
//
// The buckets live in one process: with N sidecar replicas a caller may get
// up to N times the limit.
package quota

import (
	"hash/maphash"
	"sync"
	"time"
)

// Limit is a token bucket: up to Burst requests at once, refilled at
// Requests per Per.
type Limit struct {
	Requests int64
	Per      time.Duration
	Burst    int64
}

// Valid reports whether the limit can be enforced.
func (l Limit) Valid() bool { return l.Requests > 0 && l.Per > 0 && l.Burst > 0 }

// interval is the time one token takes to refill (at least 1ns).
func (l Limit) interval() time.Duration {
	if iv := l.Per / time.Duration(l.Requests); iv > 0 {
		return iv
	}
	return 1
}

// Result is the outcome of one Take.
type Result struct {
	// Allowed is false when the bucket is empty.
	Allowed bool
	// Remaining is the number of whole requests still allowed at once.
	Remaining int64
	// RetryAfter is, when refused, how long until one request is allowed.
	RetryAfter time.Duration
	// Reset is how long until the bucket is full again.
	Reset time.Duration
}

const shards = 16

// Buckets holds the buckets of many subjects, at most about max of them.
// Safe for concurrent use.
type Buckets struct {
	seed   maphash.Seed
	shards [shards]shard
}

type shard struct {
	mu  sync.Mutex
	max int
	m   map[string]time.Time // subject → theoretical arrival time
}

// New returns Buckets tracking at most max subjects (at least shards).
func New(max int) *Buckets {
	per := max / shards
	if per < 1 {
		per = 1
	}
	b := &Buckets{seed: maphash.MakeSeed()}
	for i := range b.shards {
		b.shards[i] = shard{max: per, m: make(map[string]time.Time)}
	}
	return b
}

// Take spends one request of subject's bucket under limit at now.
func (b *Buckets) Take(subject string, limit Limit, now time.Time) Result {
	if !limit.Valid() {
		return Result{Allowed: true, Remaining: -1}
	}
	iv := limit.interval()
	window := iv * time.Duration(limit.Burst)
	sh := &b.shards[maphash.String(b.seed, subject)%shards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tat, ok := sh.m[subject]
	if !ok || tat.Before(now) {
		tat = now
	}
	next := tat.Add(iv)
	if allowAt := next.Add(-window); now.Before(allowAt) {
		return Result{RetryAfter: allowAt.Sub(now), Reset: tat.Sub(now)}
	}
	if !ok && len(sh.m) >= sh.max {
		sh.evict(now)
	}
	sh.m[subject] = next
	reset := next.Sub(now)
	return Result{Allowed: true, Remaining: int64((window - reset) / iv), Reset: reset}
}

// evict drops the buckets that have refilled (dropping them changes no
// decision), then, if still full, arbitrary ones down to three quarters:
// those subjects start again with a full bucket. Called with mu held.
func (sh *shard) evict(now time.Time) {
	for k, tat := range sh.m {
		if !tat.After(now) {
			delete(sh.m, k)
		}
	}
	for k := range sh.m {
		if len(sh.m) <= sh.max*3/4 {
			break
		}
		delete(sh.m, k)
	}
}

// Len is the number of subjects tracked.
func (b *Buckets) Len() int {
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
