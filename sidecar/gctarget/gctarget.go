// Package gctarget chooses the sidecar's garbage collector target (GOGC)
// from what is live: a fixed room above the live heap rather than Go's
// proportional one.
//
// What the sidecar collects is mostly its bundle's garbage (each shard
// change of a 100,000-key policy leaves some 1.9 MiB), while its live heap
// is the compiled keys: 16.6 MiB at 100,000 keys, a few MiB for a small
// policy. Go's default (GOGC=100) lets the heap grow to twice what is live
// before collecting, which took a 100,000-key sidecar past 64 MiB while its
// keys arrived; a low fixed target (25) kept it at 53 MiB but made the
// collector run four times as often on a small heap, where the requests'
// garbage (TLS and HTTP/2 allocate per request) is what it collects: 13-15 %
// more CPU per TLS request (docs/sidecar.md, "Memory").
package gctarget

import (
	"runtime/debug"
	"runtime/metrics"
)

const (
	// Room is the heap growth above what is live that Auto aims at.
	Room = 4 << 20
	// Min and Max bound the target Auto sets: Go's default for a small
	// heap, a quarter of what is live for a large one.
	Min = 25
	Max = 100
)

// For is the target that gives a live heap of live bytes Room to grow,
// between Min and Max.
func For(live uint64) int {
	if live == 0 {
		return Max
	}
	return int(max(Min, min(Max, Room*100/live))) //nolint:gosec // between Min and Max
}

// Live is the heap live after the last collection, in bytes.
func Live() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// Auto sets the collector's target for the heap live now (For(Live())) and
// returns it. The sidecar calls it whenever a bundle is put in force, which
// is when what is live changes.
func Auto() int {
	p := For(Live())
	debug.SetGCPercent(p)
	return p
}
