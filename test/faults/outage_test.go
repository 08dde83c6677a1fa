package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestAPIServerOutage (scenario 3): the kube-apiserver is stopped (etcd
// keeps running) under load and started again. During: no false 401, no
// 5xx; /readyz says the source is unreachable; a revocation the sidecar
// cannot persist is not acknowledged. After: a rotation and a revocation
// made right after the return propagate (times printed).
func TestAPIServerOutage(t *testing.T) {
	sys := newSystem(t, "outage", 2, keygatev1.ApiKeySpec{})
	a, b := sys.sidecars[0], sys.sidecars[1]
	var auths []string
	for _, k := range sys.keys {
		auths = append(auths, k.basic(), "Bearer "+token(t, a, k.id, k.secret))
	}
	spare := make([]string, 10)
	for i := range spare {
		spare[i] = token(t, b, sys.keys[0].id, sys.keys[0].secret)
	}
	outage := pick(12*time.Second, 30*time.Second)
	stop := startLoad(loadSpec{targets: sys.sidecars, auths: auths, requests: pick(6000, 60000), maxTime: outage + time.Minute, workers: 8})

	apiServer := env.testEnv.ControlPlane.GetAPIServer()
	down := time.Now()
	if err := apiServer.Stop(); err != nil && !strings.Contains(err.Error(), "timeout waiting") {
		t.Fatal(err)
	}
	// Revocations while the API server is down must not be acknowledged.
	var ackedDuring []string
	var refusedDuring int
	for _, tok := range spare[:5] {
		switch revoke(b, tok) {
		case http.StatusCreated:
			ackedDuring = append(ackedDuring, tok)
		default:
			refusedDuring++
		}
	}
	eventually(t, outage+time.Minute, "stale source reported by /readyz", func() bool {
		return strings.Contains(adminBody(a.admin+"/readyz"), "source unreachable")
	})
	staleMetric := strings.Contains(adminBody(a.admin+"/metrics"), "keygate_sidecar_source_stale 1")
	// The outage's length is the scenario, not a synchronisation.
	time.Sleep(time.Until(down.Add(outage)))
	must(t, apiServer.Start())
	back := time.Now()
	during := stop()

	// Right after the return: a rotation and a revocation.
	old := sys.keys[0]
	eventually(t, operatorTimeout, "rotation request accepted", func() bool {
		return env.k8s.Patch(context.Background(), &keygatev1.ApiKey{ObjectMeta: objectMeta(old.name)},
			client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"`+keygatev1.AnnotationRotate+`":"after-outage"}}}`))) == nil
	})
	requested := time.Now()
	var cur key
	eventually(t, 2*operatorTimeout, "new secret after the outage", func() bool {
		k, err := readKey(t, old.name)
		cur = k
		return err == nil && k.secret != old.secret
	})
	written := time.Since(requested)
	for _, s := range sys.sidecars {
		eventually(t, 2*operatorTimeout, s.name+" accepts the new secret", func() bool { return get(s, cur.basic()) == http.StatusOK })
	}
	rotationInForce := time.Since(requested)

	var revokeCode int
	eventually(t, 2*operatorTimeout, "revocation after the outage acknowledged", func() bool {
		revokeCode = revoke(b, spare[5])
		return revokeCode == http.StatusCreated
	})
	revoked := time.Now()
	for _, s := range sys.sidecars {
		eventually(t, 2*operatorTimeout, s.name+" refuses the token revoked after the outage", func() bool {
			return get(s, "Bearer "+spare[5]) == http.StatusUnauthorized
		})
	}
	revocationInForce := time.Since(revoked)

	// Acknowledged during the outage but not persisted = lost.
	cm := &corev1.ConfigMap{}
	must(t, env.k8s.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: bundle.RevocationsConfigMapName(sys.policy)}, cm))
	lost := 0
	for _, tok := range ackedDuring {
		if _, ok := cm.Data[jtiOf(t, tok)]; !ok {
			lost++
		}
	}
	fmt.Printf("faults: API server outage %s: load %s; revocations during: %d refused, %d acknowledged, %d of those lost; /readyz reported the stale source (keygate_sidecar_source_stale 1: %v); after the return: rotation requested %s later, secret written in %s, in force on all sidecars in %s; revocation in force on all sidecars in %s\n",
		outage, during, refusedDuring, len(ackedDuring), lost, staleMetric, requested.Sub(back).Round(time.Millisecond),
		written.Round(time.Millisecond), rotationInForce.Round(time.Millisecond), revocationInForce.Round(time.Millisecond))
	if lost != 0 || !staleMetric {
		t.Fatalf("%d revocations acknowledged during the outage were lost; stale metric 1 during the outage: %v", lost, staleMetric)
	}
	during.check(t)
}

func adminBody(url string) string {
	resp, err := plainClient.Get(url) //nolint:noctx // loopback admin port
	if err != nil {
		return ""
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return string(b)
}
