package usage

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 30, 0, time.UTC)

func TestRecorderKeepsTheLatestMinute(t *testing.T) {
	r := NewRecorder()
	r.Seen("apk-a", t0)
	r.Seen("apk-a", t0.Add(-5*time.Minute)) // older: ignored
	r.Seen("apk-b", t0.Add(2*time.Minute))
	r.Seen("", t0)
	got := r.Changes()
	want := map[string]string{"apk-a": "2026-12-02T10:00:00Z", "apk-b": "2026-12-02T10:02:00Z"}
	if len(got) != len(want) || got["apk-a"] != want["apk-a"] || got["apk-b"] != want["apk-b"] {
		t.Fatalf("changes = %v, want %v", got, want)
	}
	r.Published(got)
	if c := r.Changes(); len(c) != 0 {
		t.Fatalf("changes after publishing = %v, want none", c)
	}
	// The same minute again is no change; a later one is.
	r.Seen("apk-a", t0.Add(20*time.Second))
	if c := r.Changes(); len(c) != 0 {
		t.Fatalf("same minute made changes %v", c)
	}
	r.Seen("apk-a", t0.Add(time.Minute))
	if c := r.Changes(); len(c) != 1 || c["apk-a"] != "2026-12-02T10:01:00Z" {
		t.Fatalf("changes = %v, want apk-a at 10:01", c)
	}
	r.Forget(func(k string) bool { return k != "apk-a" })
	if c := r.Changes(); len(c) != 0 {
		t.Fatalf("forgotten key still changes: %v", c)
	}
	var nilRec *Recorder
	nilRec.Seen("apk-a", t0) // no panic
}

func TestRecorderConcurrentSeen(t *testing.T) {
	r := NewRecorder()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				r.Seen("apk-"+strconv.Itoa(i%10), t0.Add(time.Duration(g*i)*time.Second))
			}
		}(g)
	}
	wg.Wait()
	c := r.Changes()
	if len(c) != 10 {
		t.Fatalf("%d keys recorded, want 10", len(c))
	}
	// The latest minute wins: g=7, the largest i of each key.
	if got, want := c["apk-9"], FormatMinute(t0.Add(7*999*time.Second).Unix()/60); got != want {
		t.Fatalf("apk-9 = %s, want %s", got, want)
	}
}

type sink struct {
	mu       sync.Mutex
	writes   []map[string]string
	fail     bool
	failures int
}

func (s *sink) Publish(_ context.Context, e map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		s.failures++
		return errors.New("API server unavailable")
	}
	s.writes = append(s.writes, e)
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.writes)
}

func TestPublisherWritesAtMostOnceAMinute(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	rec := NewRecorder()
	s := &sink{}
	p := &Publisher{Recorder: rec, Sink: s, Clock: clk, Interval: time.Second} // raised to a minute
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	waitFor(t, clk.HasWaiters)

	// Many requests within one minute: nothing is written before the tick.
	for i := 0; i < 1000; i++ {
		rec.Seen("apk-"+strconv.Itoa(i%3), clk.Now())
	}
	clk.Step(59 * time.Second)
	if n := s.count(); n != 0 {
		t.Fatalf("%d writes before a minute passed", n)
	}
	clk.Step(time.Second)
	waitFor(t, func() bool { return s.count() == 1 })
	if w := s.writes[0]; len(w) != 3 {
		t.Fatalf("first write %v, want 3 keys", w)
	}
	// A minute without requests writes nothing.
	clk.Step(time.Minute)
	cancel()
	<-done
	if n := s.count(); n != 1 {
		t.Fatalf("%d writes, want 1 (an idle minute and the final flush have nothing new)", n)
	}
}

func TestPublisherRetriesAFailedWrite(t *testing.T) {
	rec := NewRecorder()
	s := &sink{fail: true}
	p := &Publisher{Recorder: rec, Sink: s}
	rec.Seen("apk-0", t0)
	if p.PublishOnce(context.Background()) {
		t.Fatal("a failed write reported success")
	}
	rec.Seen("apk-1", t0.Add(time.Minute))
	s.fail = false
	if !p.PublishOnce(context.Background()) || len(s.writes) != 1 || len(s.writes[0]) != 2 {
		t.Fatalf("retry wrote %v, want both keys", s.writes)
	}
	if p.PublishOnce(context.Background()) {
		t.Fatal("wrote again without changes")
	}
}

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
