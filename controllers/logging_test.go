package controllers

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestQuietConflictsLogsConflictsAtDebugLevel(t *testing.T) {
	var lines []string
	record := func(prefix, args string) { lines = append(lines, args) }
	conflict := apierrors.NewConflict(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "keygate",
		errors.New("the object has been modified; please apply your changes to the latest version and try again"))
	other := errors.New("connection refused")

	for _, verbosity := range []int{0, 1} {
		lines = nil
		log := QuietConflicts(funcr.New(record, funcr.Options{Verbosity: verbosity})).WithName("cert-rotation").WithValues("k", "v")
		log.Error(conflict, "Failed to update lease")
		log.Error(fmt.Errorf("could not refresh CA and server certs: %w", conflict), "wrapped")
		log.Error(apierrors.NewAlreadyExists(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "keygate"), "Error initially creating lease lock")
		log.Error(other, "Failed to reach the API server")

		errorLines, debugLines := 0, 0
		for _, l := range lines {
			switch {
			case strings.Contains(l, `"level"=1`):
				debugLines++
				if !strings.Contains(l, "the object has been modified") && !strings.Contains(l, "already exists") || !strings.Contains(l, `"retried"=true`) {
					t.Errorf("debug line lacks the conflict: %s", l)
				}
			case strings.Contains(l, `"error"`) && strings.Contains(l, "connection refused"):
				errorLines++
			default:
				t.Errorf("unexpected line at verbosity %d: %s", verbosity, l)
			}
		}
		if errorLines != 1 {
			t.Errorf("verbosity %d: %d error lines for the non-conflict error, want 1: %q", verbosity, errorLines, lines)
		}
		if want := verbosity * 3; debugLines != want {
			t.Errorf("verbosity %d: %d debug lines for the three conflicts, want %d: %q", verbosity, debugLines, want, lines)
		}
	}
}
