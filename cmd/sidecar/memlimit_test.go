package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/gctarget"
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

// --gogc sets the collector's target before the sidecar starts: auto unless
// GOGC is set, then GOGC; a bad one is refused.
func TestGOGCFlag(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	start := func(extra ...string) error {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // it stops at once
		return run(ctx, append([]string{"--bundle-file", t.TempDir() + "/none.json", "--upstream-port", "8080", "--port", "0",
			"--admin-port", "0", "--bind-address", "127.0.0.1"}, extra...), nil)
	}
	t.Setenv("GOGC", "")
	debug.SetGCPercent(30)
	_ = start()
	if got := gcPercent(); got != gctarget.Max {
		t.Fatalf("GOGC unset (auto, before a bundle): collector target %d, want %d", got, gctarget.Max)
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

// With --gogc=auto the target follows what is live each time a bundle is put
// in force: a quarter of it for a large heap (here 48 MiB held by the test).
func TestGOGCAutoFollowsTheBundle(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	t.Setenv("GOGC", "")
	held := make([][]byte, 0, 48)
	for range 48 {
		held = append(held, make([]byte, 1<<20))
	}
	runtime.GC()
	path := t.TempDir() + "/bundle.json"
	must(t, bundletest.New(bundle.AlgEdDSA).WriteFile(path))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--bundle-file", path, "--upstream-port", "8080", "--port", "0", "--admin-port", "0",
			"--bind-address", "127.0.0.1"}, nil)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for gcPercent() != gctarget.Min {
		if time.Now().After(deadline) {
			t.Fatalf("48 MiB live and a bundle loaded: collector target %d, want %d", gcPercent(), gctarget.Min)
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(held)
}

// gcPercent is the collector's target in force.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}
