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
