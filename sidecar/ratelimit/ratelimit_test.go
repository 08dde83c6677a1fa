package ratelimit

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unsafe"
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

// TestLimiterLongSubjects: subjects are attacker-chosen (a key ID in a
// 16 KiB token request, a 32 KiB header); tracked subjects must cost a bounded
// number of bytes each, and a long subject must still be counted.
func TestLimiterLongSubjects(t *testing.T) {
	l := New(2, time.Minute, 1000)
	now := time.Now()
	long := strings.Repeat("k", 16<<10)
	for i := 0; i < 1000; i++ {
		l.Fail(fmt.Sprint(i, long), now)
	}
	total := 0
	for k := range l.entries {
		total += len(k)
	}
	if total > 1000*64 {
		t.Fatalf("%d bytes of subject names held for %d subjects", total, len(l.entries))
	}
	l.Fail("x"+long, now)
	l.Fail("x"+long, now)
	if b, _ := l.Blocked("x"+long, now); !b {
		t.Fatal("a long subject is not counted")
	}
	if b, _ := l.Blocked("y"+long, now); b {
		t.Fatal("another long subject is blocked")
	}
}

// TestLimiterKeepsItsOwnSubjects: a subject that aliases a buffer the
// caller reuses (the fast path's request head) is copied when it is kept.
func TestLimiterKeepsItsOwnSubjects(t *testing.T) {
	now := time.Now()
	l := New(2, time.Minute, 100)
	buf := []byte("ghost-key")
	for range 2 {
		l.Fail(unsafe.String(&buf[0], len(buf)), now)
	}
	copy(buf, "other-key")
	if b, _ := l.Blocked("ghost-key", now); !b {
		t.Fatal("ghost-key not blocked after its buffer was reused")
	}
	if b, _ := l.Blocked("other-key", now); b {
		t.Fatal("other-key blocked: the limiter kept the caller's buffer")
	}
}
