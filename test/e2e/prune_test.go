package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Bounds of TestAcknowledgedRevocationsSurvivePruning.
const (
	pruneRounds        = 12
	pruneSidecars      = 3
	pruneTokensPerCar  = 20
	pruneWorkersPerCar = 5
	pruneMaxSeeds      = 2000
)

// TestAcknowledgedRevocationsSurvivePruning is issue 18's loss as it
// happened: several sidecar processes of one policy revoke tokens at once
// while the operator prunes expired entries from the same revocations
// ConfigMap (expired entries are added throughout, so pruning runs over and
// over). Every revocation a sidecar acknowledged must be in the ConfigMap
// afterwards and refused by a sidecar started afterwards. Each round starts
// from a ConfigMap with no live entry (the previous round's entries are
// removed once checked): the state in which a prune computed from the
// operator's cache became {"data":null}.
func TestAcknowledgedRevocationsSurvivePruning(t *testing.T) {
	const name = "prune"
	NewWithT(t).Expect(createPolicy(t.Context(), name, keygatev1.TokenPolicySpec{DefaultAction: keygatev1.ActionAuthenticated})).To(Succeed())
	creds := createKey(t, name+"-key", keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: name}})
	cars := make([]*sidecar, pruneSidecars)
	for i := range cars {
		cars[i] = startSidecarFor(t, fmt.Sprintf("%s-sidecar-%d", name, i), name)
		cars[i].waitWorks(creds)
	}
	totalAcked, totalLost, totalAccepted, roundsLosing := 0, 0, 0, 0
	for round := range pruneRounds {
		acked, lost, accepted, seeds := pruneRound(t, round, name, creds, cars)
		fmt.Printf("prune round %d: %d sidecars, %d revocations acknowledged, %d expired entries added meanwhile, %d lost from the ConfigMap, %d accepted by a new sidecar\n",
			round, pruneSidecars, acked, seeds, lost, accepted)
		totalAcked += acked
		totalLost += lost
		totalAccepted += accepted
		if lost > 0 {
			roundsLosing++
		}
	}
	fmt.Printf("prune under concurrent revocations: %d rounds, %d revocations acknowledged, %d lost (%d rounds losing some), %d accepted by a new sidecar\n",
		pruneRounds, totalAcked, totalLost, roundsLosing, totalAccepted)
	if totalLost != 0 || totalAccepted != 0 {
		t.Fatalf("%d acknowledged revocations lost from the ConfigMap, %d revoked tokens accepted by a new sidecar", totalLost, totalAccepted)
	}
}

// pruneRound runs one round on a new policy and returns the number of
// acknowledged revocations, how many of them are missing from the
// ConfigMap, how many a new sidecar accepted, and how many expired entries
// were added meanwhile.
func pruneRound(t *testing.T, round int, name string, creds credentials, cars []*sidecar) (acked, lost, accepted, seeds int) {
	g := NewWithT(t)
	tokens := make([][]string, len(cars))
	for i := range cars {
		for range pruneTokensPerCar {
			tokens[i] = append(tokens[i], cars[i].token(creds))
		}
	}
	cmKey := types.NamespacedName{Namespace: namespace, Name: bundle.RevocationsConfigMapName(name)}

	// Expired entries, added until the revocations are done: each one makes
	// the operator reconcile and prune.
	stop := make(chan struct{})
	var seeded atomic.Int32
	var seederWG sync.WaitGroup
	seederWG.Go(func() {
		past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		for i := 0; i < pruneMaxSeeds; i++ {
			select {
			case <-stop:
				return
			default:
			}
			patch := fmt.Sprintf(`{"data":{"seed-%d-%d":%q}}`, round, i, past)
			cm := &corev1.ConfigMap{}
			cm.Namespace, cm.Name = cmKey.Namespace, cmKey.Name
			if suite.k8s.Patch(t.Context(), cm, client.RawPatch(types.MergePatchType, []byte(patch))) == nil {
				seeded.Add(1)
			}
		}
	})

	var mu sync.Mutex
	var ackedJTIs []string
	var ackedTokens []string
	var wg sync.WaitGroup
	for i, car := range cars {
		var next atomic.Int32
		for range pruneWorkersPerCar {
			wg.Go(func() {
				for {
					n := int(next.Add(1) - 1)
					if n >= len(tokens[i]) {
						return
					}
					tok := tokens[i][n]
					if revokeAt(car.base, tok) == http.StatusCreated {
						claims, err := jwtClaims(tok)
						if err != nil {
							continue
						}
						mu.Lock()
						ackedJTIs = append(ackedJTIs, claims["jti"].(string))
						ackedTokens = append(ackedTokens, tok)
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	close(stop)
	seederWG.Wait()

	// Pruning has run to the end: no expired entry is left.
	var data map[string]string
	g.Eventually(func(g Gomega) {
		cm := &corev1.ConfigMap{}
		g.Expect(suite.k8s.Get(t.Context(), cmKey, cm)).To(Succeed())
		for k := range cm.Data {
			g.Expect(k).NotTo(HavePrefix("seed-"), "expired entries pruned")
		}
		data = cm.Data
	}, operatorTimeout, interval).Should(Succeed())
	for _, jti := range ackedJTIs {
		if _, ok := data[jti]; !ok {
			lost++
		}
	}
	fresh := startSidecarFor(t, fmt.Sprintf("%s-fresh-%d", name, round), name)
	// Accepted means let through: after --failure-limit refusals the
	// sidecar answers 429 instead of 401, which is a refusal too.
	for _, tok := range ackedTokens {
		if fresh.status("/charges", "Bearer "+tok) == http.StatusOK {
			accepted++
		}
	}
	fresh.proc.stop()

	// Checked: remove this round's entries, so that the next round starts
	// with no live entry again.
	if len(data) > 0 {
		removed := map[string]any{}
		for k := range data {
			removed[k] = nil
		}
		patch, _ := json.Marshal(map[string]any{"data": removed})
		cm := &corev1.ConfigMap{}
		cm.Namespace, cm.Name = cmKey.Namespace, cmKey.Name
		g.Expect(suite.k8s.Patch(t.Context(), cm, client.RawPatch(types.MergePatchType, patch))).To(Succeed())
	}
	return len(ackedJTIs), lost, accepted, int(seeded.Load())
}

// revokeAt revokes tok at the sidecar at base ({"action":"revoke"} with the
// token as bearer) and returns the status, 0 when the request failed.
func revokeAt(base, tok string) int {
	req, err := http.NewRequest(http.MethodPost, base+"/api/token", strings.NewReader(`{"action":"revoke"}`)) //nolint:noctx // bounded by the client's timeout
	if err != nil {
		return 0
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := revokeClient.Do(req)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

var revokeClient = &http.Client{Timeout: 10 * time.Second}
