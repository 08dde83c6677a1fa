package faults

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestRotationUnderLoad (scenario 1): every key is rotated by annotation
// and the policy's signing key is rotated while a load runs with the old
// secrets and old tokens on all three sidecars: no false 401/403 during the
// grace period; the time until every sidecar accepts each new secret. Then
// a key with a short grace: its old secret is refused once grace is over.
func TestRotationUnderLoad(t *testing.T) {
	sys := newSystem(t, "rotation", pick(3, 8), keygatev1.ApiKeySpec{})
	var auths []string
	for _, k := range sys.keys {
		auths = append(auths, k.basic(), "Bearer "+token(t, sys.sidecars[0], k.id, k.secret))
	}
	stop := startLoad(loadSpec{targets: sys.sidecars, auths: auths, requests: pick(4000, 40000), maxTime: 2 * time.Minute, workers: 8})

	requested := time.Now()
	for _, k := range sys.keys {
		patch := []byte(`{"metadata":{"annotations":{"` + keygatev1.AnnotationRotate + `":"load-1"}}}`)
		must(t, env.k8s.Patch(t.Context(), &keygatev1.ApiKey{ObjectMeta: objectMeta(k.name)}, client.RawPatch(types.MergePatchType, patch)))
	}
	// The signing key: changing the algorithm rotates it at once; tokens
	// signed with the old key keep verifying.
	must(t, env.k8s.Patch(t.Context(), &keygatev1.TokenPolicy{ObjectMeta: objectMeta(sys.policy)},
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"signing":{"algorithm":"ES256"}}}`))))

	var mu sync.Mutex
	var inForce []time.Duration
	var wg sync.WaitGroup
	for _, old := range sys.keys {
		var cur key
		eventually(t, operatorTimeout, "new secret of "+old.name, func() bool {
			k, err := readKey(t, old.name)
			cur = k
			return err == nil && k.secret != old.secret
		})
		for _, s := range sys.sidecars {
			wg.Go(func() {
				deadline := time.Now().Add(operatorTimeout)
				for time.Now().Before(deadline) {
					if get(s, cur.basic()) == http.StatusOK {
						mu.Lock()
						inForce = append(inForce, time.Since(requested))
						mu.Unlock()
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
			})
		}
	}
	wg.Wait()
	missing := len(sys.keys)*len(sys.sidecars) - len(inForce)

	// Short grace: the old secret stops working once it is over.
	const grace = 2 * time.Second
	short := "rotation-short"
	must(t, env.k8s.Create(t.Context(), &keygatev1.ApiKey{ObjectMeta: objectMeta(short), Spec: keygatev1.ApiKeySpec{
		PolicyRef: keygatev1.PolicyReference{Name: sys.policy},
		Rotation:  &keygatev1.KeyRotation{GracePeriod: &metav1.Duration{Duration: grace}},
	}}))
	var old key
	eventually(t, operatorTimeout, "credentials of "+short, func() bool {
		k, err := readKey(t, short)
		old = k
		return err == nil && k.version >= 1
	})
	for _, s := range sys.sidecars {
		eventually(t, operatorTimeout, s.name+" accepts "+short, func() bool { return get(s, old.basic()) == http.StatusOK })
	}
	must(t, env.k8s.Patch(t.Context(), &keygatev1.ApiKey{ObjectMeta: objectMeta(short)},
		client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"`+keygatev1.AnnotationRotate+`":"short-1"}}}`))))
	rotated := time.Now()
	var refusedAfter []time.Duration
	for _, s := range sys.sidecars {
		eventually(t, operatorTimeout, s.name+" refuses the old secret after grace", func() bool {
			return get(s, old.basic()) == http.StatusUnauthorized
		})
		d := time.Since(rotated)
		if d < grace { // a lower bound: a busy machine only makes d longer
			t.Errorf("%s refused the old secret %s after the rotation request, before its %s grace ended", s.name, d, grace)
		}
		refusedAfter = append(refusedAfter, d)
	}
	l := stop() // the load ran through both rotations
	fmt.Printf("faults: rotation under load: %d keys and the signing key rotated; load: %s; new secret in force on every sidecar %s after the request, %d never; old secret (grace %s) refused on all sidecars %s after the rotation\n",
		len(sys.keys), l, percentiles(inForce), missing, grace, percentiles(refusedAfter))
	if missing != 0 {
		t.Fatalf("%d (key, sidecar) pairs never accepted the new secret", missing)
	}
	l.check(t)
}
