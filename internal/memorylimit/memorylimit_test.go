package memorylimit

import (
	"math"
	"runtime/debug"
	"testing"
)

// restoreMemoryLimit puts the runtime's limit back after a test.
func restoreMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
}

func TestMemoryLimitFlag(t *testing.T) {
	restoreMemoryLimit(t)
	for _, c := range []struct {
		flag string
		want int64
	}{
		{"460Mi", 460 << 20},
		{"1G", 1e9},
		{"none", math.MaxInt64},
	} {
		got, err := Apply(c.flag)
		if err != nil {
			t.Fatalf("--memory-limit=%s: %v", c.flag, err)
		}
		if got != c.want || debug.SetMemoryLimit(-1) != c.want {
			t.Errorf("--memory-limit=%s: returned %d, runtime limit %d, want %d", c.flag, got, debug.SetMemoryLimit(-1), c.want)
		}
	}
	for _, bad := range []string{"lots", "-1Mi", "0"} {
		if _, err := Apply(bad); err == nil {
			t.Errorf("--memory-limit=%s accepted", bad)
		}
	}
}

// auto keeps a GOMEMLIMIT given in the environment (the runtime read it at
// start; here it is set by hand as the runtime would have).
func TestMemoryLimitAutoKeepsGOMEMLIMIT(t *testing.T) {
	restoreMemoryLimit(t)
	t.Setenv("GOMEMLIMIT", "300MiB")
	debug.SetMemoryLimit(300 << 20)
	got, err := Apply("auto")
	if err != nil {
		t.Fatal(err)
	}
	if got != 300<<20 || debug.SetMemoryLimit(-1) != 300<<20 {
		t.Errorf("auto with GOMEMLIMIT=300MiB: %d, runtime %d", got, debug.SetMemoryLimit(-1))
	}
}
