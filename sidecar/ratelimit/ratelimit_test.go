package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := New(3, time.Minute, 100)
	for i := 0; i < 3; i++ {
		if b, _ := l.Blocked("k", now); b {
			t.Fatal("blocked early")
		}
		l.Fail("k", now)
	}
	if b, after := l.Blocked("k", now.Add(10*time.Second)); !b || after != 50*time.Second {
		t.Fatalf("not blocked: %v %v", b, after)
	}
	if b, _ := l.Blocked("k", now.Add(time.Minute)); b {
		t.Fatal("still blocked after the window")
	}
}

func TestLimiterBoundedMemory(t *testing.T) {
	l := New(3, time.Minute, 1000)
	now := time.Now()
	for i := 0; i < 100000; i++ {
		l.Fail(fmt.Sprint("addr-", i), now)
	}
	if l.Len() > 1000 {
		t.Fatalf("%d subjects tracked", l.Len())
	}
}
