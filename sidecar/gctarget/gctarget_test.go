package gctarget

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// The target gives a small heap Go's default and a large one Room, never
// less than a quarter of what is live.
func TestFor(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{{0, Max}, {1 << 20, Max}, {4 << 20, 100}, {8 << 20, 50}, {10 << 20, 40}, {16 << 20, Min}, {64 << 20, Min}} {
		if got := For(c.live); got != c.want {
			t.Errorf("For(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}

// Auto reads the live heap and sets the collector's target from it.
func TestAuto(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	keep := make([][]byte, 0, 32)
	for range 32 {
		keep = append(keep, make([]byte, 1<<20)) // 32 MiB live
	}
	runtime.GC()
	if live := Live(); live < 32<<20 {
		t.Fatalf("live heap %d bytes with 32 MiB held", live)
	}
	if got, set := Auto(), debug.SetGCPercent(100); got != Min || set != Min {
		t.Fatalf("32 MiB live: Auto() = %d, the runtime's target %d; want %d", got, set, Min)
	}
	runtime.KeepAlive(keep)
	keep = nil //nolint:ineffassign,wastedassign // dropped before the next collection
	runtime.GC()
	if got := Auto(); got != Max {
		t.Fatalf("a small heap (%d bytes live): Auto() = %d, want %d", Live(), got, Max)
	}
}
