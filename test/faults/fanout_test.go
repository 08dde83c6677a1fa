package faults

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestRevocationFanOut (scenario 2): tokens revoked at sidecar A at a steady
// rate; how long until B and C refuse each; none accepted 1 s after the
// revocation was acknowledged.
func TestRevocationFanOut(t *testing.T) {
	sys := newSystem(t, "fanout", 2, keygatev1.ApiKeySpec{})
	a, b, c := sys.sidecars[0], sys.sidecars[1], sys.sidecars[2]
	n, rate := pick(60, 240), pick(30, 20)
	tokens := make([]string, n)
	for i := range tokens {
		k := sys.keys[i%len(sys.keys)]
		tokens[i] = token(t, a, k.id, k.secret)
	}
	var mu sync.Mutex
	var delays []time.Duration
	var refused, lateAccepted atomic.Int64
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for _, tok := range tokens {
		<-tick.C
		if revoke(a, tok) != http.StatusCreated {
			refused.Add(1)
			continue
		}
		acked := time.Now()
		for _, other := range []*sidecar{b, c} {
			wg.Go(func() {
				// Polls until refused; bounded by 10 s.
				for time.Since(acked) < 10*time.Second {
					if get(other, "Bearer "+tok) == http.StatusUnauthorized {
						d := time.Since(acked)
						mu.Lock()
						delays = append(delays, d)
						mu.Unlock()
						if d > time.Second {
							lateAccepted.Add(1)
						}
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
				lateAccepted.Add(1)
			})
		}
	}
	wg.Wait()
	// Every revoked token is refused everywhere now.
	var accepted int
	for _, tok := range tokens {
		for _, s := range sys.sidecars {
			if get(s, "Bearer "+tok) != http.StatusUnauthorized {
				accepted++
			}
		}
	}
	fmt.Printf("faults: revocation fan-out: %d revocations at A at %d/s; refused by B and C after %s; %d accepted more than 1 s after the acknowledgement, %d accepted at the end, %d revocations refused\n",
		n, rate, percentiles(delays), lateAccepted.Load(), accepted, refused.Load())
	if refused.Load() != 0 || lateAccepted.Load() != 0 || accepted != 0 {
		t.Fatalf("%d revocations refused, %d revoked tokens accepted more than 1 s after the acknowledgement, %d at the end", refused.Load(), lateAccepted.Load(), accepted)
	}
}
