package bundletest

import (
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
)

// ScaleKeys is the number of keys a scale benchmark loads: BENCH_KEYS, or
// 100,000 (64 shards).
func ScaleKeys(tb testing.TB) int {
	tb.Helper()
	s := os.Getenv("BENCH_KEYS")
	if s == "" {
		return 100_000
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		tb.Fatalf("BENCH_KEYS: %v", err)
	}
	return n
}

// LiveHeap is the heap in use after two collections (the second frees what
// the first's finalizers released).
func LiveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// HeapProfile writes a heap profile to the file BENCH_HEAP_PROFILE names, if
// it is set.
func HeapProfile(tb testing.TB) {
	tb.Helper()
	path := os.Getenv("BENCH_HEAP_PROFILE")
	if path == "" {
		return
	}
	out, err := os.Create(path) //nolint:gosec // the file the benchmark was asked to write
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = out.Close() }()
	if err := pprof.WriteHeapProfile(out); err != nil {
		tb.Fatal(err)
	}
}
