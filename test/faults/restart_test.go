package faults

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestSidecarKilledMidLoad (scenario 4, sidecar): tokens are revoked at A
// under load, then C is SIGKILLed and started again: from its first
// request on it refuses every token revoked before the kill, and the load
// on A and B never sees a wrong answer.
func TestSidecarKilledMidLoad(t *testing.T) {
	sys := newSystem(t, "restart", 2, keygatev1.ApiKeySpec{})
	a, b, c := sys.sidecars[0], sys.sidecars[1], sys.sidecars[2]
	n := pick(30, 100)
	var tokens, auths []string
	for i := range n {
		k := sys.keys[i%len(sys.keys)]
		tokens = append(tokens, token(t, a, k.id, k.secret))
	}
	for _, k := range sys.keys {
		auths = append(auths, k.basic(), "Bearer "+token(t, b, k.id, k.secret))
	}
	stop := startLoad(loadSpec{targets: []*sidecar{a, b}, auths: auths, requests: pick(3000, 20000), maxTime: time.Minute, workers: 8})
	for _, tok := range tokens {
		if code := revoke(a, tok); code != http.StatusCreated {
			t.Fatalf("revoke at A: %d", code)
		}
	}
	killed := time.Now()
	c.killAndRestart(t)
	restartedIn := time.Since(killed)
	accepted := 0
	for _, tok := range tokens {
		if get(c, "Bearer "+tok) != http.StatusUnauthorized {
			accepted++
		}
	}
	l := stop()
	fmt.Printf("faults: sidecar SIGKILL: %d tokens revoked before the kill, %d accepted after the restart (ready %s after the kill); load on A and B: %s\n",
		n, accepted, restartedIn.Round(time.Millisecond), l)
	if accepted != 0 {
		t.Fatalf("%d revoked tokens accepted by the restarted sidecar", accepted)
	}
	l.check(t)
}

// TestManagerKilledMidRotation (scenario 4, manager): several keys are
// annotated for rotation and the manager is SIGKILLed at once, then
// started again. Every key ends with a working secret on every sidecar, and
// each key's secretVersion moves exactly once for the one request.
func TestManagerKilledMidRotation(t *testing.T) {
	sys := newSystem(t, "mgrkill", pick(4, 10), keygatev1.ApiKeySpec{})
	var auths []string
	for _, k := range sys.keys {
		auths = append(auths, k.basic())
	}
	stop := startLoad(loadSpec{targets: sys.sidecars, auths: auths, requests: pick(3000, 20000), maxTime: 2 * time.Minute, workers: 8})
	for _, k := range sys.keys {
		patch := []byte(`{"metadata":{"annotations":{"` + keygatev1.AnnotationRotate + `":"kill-1"}}}`)
		must(t, env.k8s.Patch(t.Context(), &keygatev1.ApiKey{ObjectMeta: objectMeta(k.name)}, client.RawPatch(types.MergePatchType, patch)))
	}
	env.manager.kill()
	killed := time.Now()
	if err := startManager(); err != nil {
		t.Fatal(err)
	}
	var broken, wrongVersion int
	var done []time.Duration
	for _, old := range sys.keys {
		var cur key
		eventually(t, operatorTimeout, "rotation of "+old.name, func() bool {
			k, err := readKey(t, old.name)
			cur = k
			return err == nil && k.secret != old.secret && k.version > old.version
		})
		for _, s := range sys.sidecars {
			ok := false
			deadline := time.Now().Add(operatorTimeout)
			for !ok && time.Now().Before(deadline) {
				ok = get(s, cur.basic()) == http.StatusOK
				if !ok {
					time.Sleep(interval)
				}
			}
			if !ok {
				broken++
			}
		}
		done = append(done, time.Since(killed))
	}
	l := stop()
	// Read again once everything settled: a second rotation would show now.
	for _, old := range sys.keys {
		if k, err := readKey(t, old.name); err != nil || k.version != old.version+1 {
			wrongVersion++
		}
	}
	fmt.Printf("faults: manager SIGKILL mid-rotation: %d keys, %d without a working new secret, %d whose secretVersion moved other than once; rotated on every sidecar %s after the kill; load: %s\n",
		len(sys.keys), broken, wrongVersion, percentiles(done), l)
	if broken != 0 || wrongVersion != 0 {
		t.Fatalf("%d keys without a working secret, %d rotated other than once", broken, wrongVersion)
	}
	l.check(t)
}
