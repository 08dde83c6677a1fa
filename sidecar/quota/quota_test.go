package quota

import (
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestBoundaryIsExact(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit Limit
		// interval is the refill time of one request.
		interval time.Duration
	}{
		{"10 per second, burst 10", Limit{Requests: 10, Per: time.Second, Burst: 10}, 100 * time.Millisecond},
		{"60 per minute, burst 5", Limit{Requests: 60, Per: time.Minute, Burst: 5}, time.Second},
		{"1 per hour, burst 1", Limit{Requests: 1, Per: time.Hour, Burst: 1}, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New(1000)
			for i := int64(0); i < tc.limit.Burst; i++ {
				r := b.Take("k", tc.limit, t0)
				if !r.Allowed || r.Remaining != tc.limit.Burst-1-i {
					t.Fatalf("request %d of the burst: %+v", i+1, r)
				}
			}
			r := b.Take("k", tc.limit, t0)
			if r.Allowed || r.RetryAfter != tc.interval || r.Remaining != 0 {
				t.Fatalf("request past the burst: %+v, want refused with RetryAfter %v", r, tc.interval)
			}
			if r := b.Take("k", tc.limit, t0.Add(tc.interval-time.Nanosecond)); r.Allowed || r.RetryAfter != time.Nanosecond {
				t.Fatalf("1ns before the refill: %+v", r)
			}
			if r := b.Take("k", tc.limit, t0.Add(tc.interval)); !r.Allowed || r.Remaining != 0 {
				t.Fatalf("at the refill: %+v", r)
			}
			if r := b.Take("k", tc.limit, t0.Add(tc.interval)); r.Allowed {
				t.Fatalf("second request at the refill: %+v", r)
			}
			// After a full window the whole burst is back.
			later := t0.Add(tc.interval * time.Duration(tc.limit.Burst+1))
			if r := b.Take("k", tc.limit, later); !r.Allowed || r.Remaining != tc.limit.Burst-1 {
				t.Fatalf("after a full refill: %+v", r)
			}
			if r := b.Take("other", tc.limit, t0); !r.Allowed {
				t.Fatalf("another subject shares the bucket: %+v", r)
			}
		})
	}
}

func TestSteadyRateOverAnHour(t *testing.T) {
	// Requests every 10ms for an hour of fake time at 10/s burst 1: exactly
	// one in ten passes.
	b := New(100)
	l := Limit{Requests: 10, Per: time.Second, Burst: 1}
	allowed := 0
	for i := 0; i < 360000; i++ {
		if b.Take("k", l, t0.Add(time.Duration(i)*10*time.Millisecond)).Allowed {
			allowed++
		}
	}
	if allowed != 36000 {
		t.Fatalf("allowed %d of 360000 requests at 10/s over an hour, want 36000", allowed)
	}
}

func TestInvalidLimitAllows(t *testing.T) {
	b := New(100)
	for _, l := range []Limit{{}, {Requests: 1, Per: time.Second}, {Requests: 0, Per: time.Second, Burst: 1}} {
		if r := b.Take("k", l, t0); !r.Allowed {
			t.Fatalf("limit %+v refused", l)
		}
	}
	if b.Len() != 0 {
		t.Fatalf("invalid limits created %d buckets", b.Len())
	}
}

func TestMemoryIsBounded(t *testing.T) {
	const max = 4096
	b := New(max)
	l := Limit{Requests: 1, Per: time.Hour, Burst: 1}
	for i := 0; i < 100000; i++ {
		b.Take("apk-"+strconv.Itoa(i), l, t0)
		if i%1000 == 0 && b.Len() > max {
			t.Fatalf("%d buckets after %d subjects, cap %d", b.Len(), i+1, max)
		}
	}
	if n := b.Len(); n > max || n == 0 {
		t.Fatalf("%d buckets after 100000 subjects, cap %d", n, max)
	}
	// Refilled buckets are dropped first: after the window, a new round of
	// subjects evicts the old ones and a recent subject keeps its state.
	later := t0.Add(2 * time.Hour)
	b.Take("recent", l, later)
	for i := 0; i < 100000; i++ {
		b.Take("new-"+strconv.Itoa(i), l, later)
	}
	if n := b.Len(); n > max {
		t.Fatalf("%d buckets after the second round, cap %d", n, max)
	}
}

func TestConcurrentTakesNeverExceedTheBurst(t *testing.T) {
	b := New(1000)
	l := Limit{Requests: 1, Per: time.Hour, Burst: 50}
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				if b.Take("shared", l, t0).Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed != 50 {
		t.Fatalf("allowed %d of 800 concurrent requests, want exactly the burst of 50", allowed)
	}
}

func BenchmarkTake(b *testing.B) {
	q := New(100000)
	l := Limit{Requests: 1000000, Per: time.Second, Burst: 1000000}
	subjects := make([]string, 1024)
	for i := range subjects {
		subjects[i] = "apk-" + strconv.Itoa(i)
	}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			q.Take(subjects[i%len(subjects)], l, now)
			i++
		}
	})
}

// BenchmarkMemory reports the heap held by full Buckets (100,000 subjects,
// the sidecar's default cap) per subject, after 200,000 distinct subjects.
func BenchmarkMemory(b *testing.B) {
	l := Limit{Requests: 1, Per: time.Hour, Burst: 1}
	subjects := make([]string, 200000)
	for i := range subjects {
		subjects[i] = "r\x00apk-" + strconv.Itoa(100000000+i) + "abcdefghij"
	}
	for n := 0; n < b.N; n++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		q := New(100000)
		for _, s := range subjects {
			q.Take(s, l, t0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(q.Len()), "buckets")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(q.Len()), "heap-B/bucket")
		runtime.KeepAlive(q)
	}
}
