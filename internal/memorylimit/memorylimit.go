// Package memorylimit sets the Go runtime's soft memory limit from a
// --memory-limit flag (the manager's and the sidecar's).
package memorylimit

import (
	"errors"
	"fmt"
	"math"
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"k8s.io/apimachinery/pkg/api/resource"
)

// memoryLimitRatio is the share of the container's memory limit the Go
// runtime's soft limit is set to by default: the rest is for what the
// runtime does not count (the binary, thread stacks in C, the page cache).
const memoryLimitRatio = 0.9

// Apply sets the Go runtime's soft memory limit (GOMEMLIMIT) from
// --memory-limit and returns it (math.MaxInt64 for none):
//
//   - "auto" (the default): GOMEMLIMIT when it is set, else 90 % of the
//     container's cgroup memory limit, else none;
//   - a quantity ("460Mi"): that;
//   - "none": no limit, whatever GOMEMLIMIT says.
//
// Without a limit the garbage collector lets the heap grow to twice what is
// live (GOGC=100): at 100,000 keys that took the manager's RSS to 1.9 GiB
// for some 600 MiB live (make bench-scale), and a container limited below
// that is killed (docs/operator.md, "Memory"; docs/sidecar.md). With one it collects more often as the heap nears it.
func Apply(value string) (int64, error) {
	switch value {
	case "auto", "":
		limit, err := memlimit.Set(memlimit.WithRatio(memoryLimitRatio), memlimit.WithProvider(memlimit.FromCgroup))
		if err != nil && !errors.Is(err, memlimit.ErrNoLimit) {
			// Not in a cgroup with a limit we can read (outside a
			// container, say): run without one rather than not at all.
			return debug.SetMemoryLimit(-1), nil //nolint:nilerr // documented: auto falls back to the current limit
		}
		return limit, nil
	case "none":
		debug.SetMemoryLimit(math.MaxInt64)
		return math.MaxInt64, nil
	}
	q, err := resource.ParseQuantity(value)
	if err != nil || q.Sign() <= 0 {
		return 0, fmt.Errorf("--memory-limit %q: want auto, none or a positive quantity such as 460Mi", value)
	}
	debug.SetMemoryLimit(q.Value())
	return q.Value(), nil
}

// String is a limit for the log: none, or a quantity.
func String(limit int64) string {
	if limit == math.MaxInt64 {
		return "none"
	}
	return resource.NewQuantity(limit, resource.BinarySI).String()
}
