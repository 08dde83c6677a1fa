package main

import (
	"context"
	"runtime/debug"
	"strings"
	"testing"
)

// --memory-limit sets the Go runtime's soft limit before the sidecar starts
// (the values it takes: internal/memorylimit); a bad one is refused.
func TestMemoryLimitFlag(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	err := run(context.Background(), []string{"--bundle-file", "bundle.json", "--upstream-port", "8080", "--memory-limit", "lots"}, nil)
	if err == nil || !strings.Contains(err.Error(), `--memory-limit "lots"`) {
		t.Fatalf("run with a bad --memory-limit: %v", err)
	}
	// A good one is applied as the sidecar starts (here it stops at once).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = run(ctx, []string{"--bundle-file", t.TempDir() + "/none.json", "--upstream-port", "8080", "--port", "0",
		"--admin-port", "0", "--bind-address", "127.0.0.1", "--memory-limit", "48Mi"}, nil)
	if got := debug.SetMemoryLimit(-1); got != 48<<20 {
		t.Fatalf("runtime limit %d after --memory-limit=48Mi (run: %v)", got, err)
	}
}

// --gogc sets the collector's target before the sidecar starts: DefaultGOGC
// unless GOGC is set, then GOGC; a bad one is refused.
func TestGOGCFlag(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	start := func(extra ...string) error {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // it stops at once
		return run(ctx, append([]string{"--bundle-file", t.TempDir() + "/none.json", "--upstream-port", "8080", "--port", "0",
			"--admin-port", "0", "--bind-address", "127.0.0.1"}, extra...), nil)
	}
	gcPercent := func() int {
		p := debug.SetGCPercent(100)
		debug.SetGCPercent(p)
		return p
	}
	t.Setenv("GOGC", "")
	_ = start()
	if got := gcPercent(); got != DefaultGOGC {
		t.Fatalf("GOGC unset: collector target %d, want %d", got, DefaultGOGC)
	}
	t.Setenv("GOGC", "80")
	_ = start()
	if got := gcPercent(); got != 80 {
		t.Fatalf("GOGC=80: collector target %d, want 80", got)
	}
	_ = start("--gogc", "40")
	if got := gcPercent(); got != 40 {
		t.Fatalf("--gogc=40: collector target %d, want 40", got)
	}
	_ = start("--gogc", "off")
	if got := gcPercent(); got != -1 {
		t.Fatalf("--gogc=off: collector target %d, want -1 (off)", got)
	}
	for _, bad := range []string{"0", "-5", "lots"} {
		if err := start("--gogc", bad); err == nil || !strings.Contains(err.Error(), `--gogc "`+bad+`"`) {
			t.Fatalf("--gogc=%s: %v", bad, err)
		}
	}
}
