package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitingReadyzCheck(t *testing.T) {
	notYet := errors.New("webhook certificate not ready yet")
	var calls atomic.Int32
	// Passes from its fourth call on.
	check := waiting(func(*http.Request) error {
		if calls.Add(1) < 4 {
			return notYet
		}
		return nil
	})

	if err := check(httptest.NewRequest(http.MethodGet, "/readyz", nil)); !errors.Is(err, notYet) {
		t.Fatalf("without ?wait: %v, want the check's own error at once", err)
	}
	if err := check(httptest.NewRequest(http.MethodGet, "/readyz?wait=bogus", nil)); !errors.Is(err, notYet) {
		t.Fatalf("with an invalid ?wait: %v, want the check's own error at once", err)
	}
	if err := check(httptest.NewRequest(http.MethodGet, "/readyz?wait=30s", nil)); err != nil {
		t.Fatalf("with ?wait=30s the check passed on its 4th call, but got %v", err)
	}

	never := waiting(func(*http.Request) error { return notYet })
	start := time.Now()
	if err := never(httptest.NewRequest(http.MethodGet, "/readyz?wait=300ms", nil)); !errors.Is(err, notYet) {
		t.Fatalf("a check that never passes: %v", err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("returned after %v, before the 300ms asked for", waited)
	}
}
