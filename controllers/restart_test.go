package controllers

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// writeLog records the writes (every request but GET) a client sends, as
// "METHOD path", Events left out; or, with note set, what note makes of
// each request (nothing when it returns "").
type writeLog struct {
	note   func(*http.Request) string
	mu     sync.Mutex
	writes []string
}

// wrap has the requests of c recorded.
func (w *writeLog) wrap(c *rest.Config) *rest.Config {
	note := w.note
	if note == nil {
		note = func(req *http.Request) string {
			if req.Method == http.MethodGet || strings.Contains(req.URL.Path, "/events") {
				return ""
			}
			return req.Method + " " + req.URL.Path
		}
	}
	c = rest.CopyConfig(c)
	c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			if s := note(req); s != "" {
				w.mu.Lock()
				w.writes = append(w.writes, s)
				w.mu.Unlock()
			}
			return rt.RoundTrip(req)
		})
	}
	return c
}

func (w *writeLog) distinct() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := slices.Clone(w.writes)
	slices.Sort(out)
	return slices.Compact(out)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// reconcilesDone is controller_runtime_reconcile_total of controller name,
// all results, as the process's registry holds it.
func reconcilesDone(g Gomega, name string) float64 {
	families, err := crmetrics.Registry.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	total := 0.0
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == name {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// A manager restarted with nothing changed (an upgrade, a node drain, a
// leader's failover) writes nothing: its first passes (every ApiKey, then a
// full pass of the sharded policy) find every credentials Secret, status,
// shard, the index and the policy's status as they are. A change made as it
// starts rewrites only what concerns that key: the key, its shard and the
// policy's count. make bench-scale measures the same at 100,000 keys.
func TestRestartWritesNothing(t *testing.T) {
	g := NewWithT(t)
	withKeysPerShard(t, 4)
	ns := newNamespace(t)
	m := startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p", withMaxApiKeys(12)))
	const keys = 8
	for i := range keys {
		create(t, newApiKey(ns, fmt.Sprintf("k%02d", i), "p"))
	}
	for i := range keys {
		waitReason(t, ns, fmt.Sprintf("k%02d", i), "True/Ready")
	}
	g.Eventually(func(g Gomega) {
		p := &keygatev1.TokenPolicy{}
		g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "p"}, p)).To(Succeed())
		g.Expect(p.Status.ApiKeys).To(BeEquivalentTo(keys))
		index, _ := shardsOf(g, ns, "p")
		g.Expect(index).NotTo(BeNil(), "a v2 index")
	}, timeout, interval).Should(Succeed())
	m.stop()
	apikeyPasses, policyPasses := reconcilesDone(g, "apikey"), reconcilesDone(g, "tokenpolicy")

	// The new manager's writes are recorded: a write of unchanged content
	// (a shard, a status) leaves the resourceVersion as it was, so only
	// the requests tell it.
	var log writeLog
	startManagerWith(t, ns, clock.RealClock{}, log.wrap(cfg))
	canary := getApiKey(g, ns, fmt.Sprintf("k%02d", keys-1))
	c, _ := getCreds(g, ns, canary.Status.SecretName)
	g.Expect(k8sClient.Patch(context.Background(), canary, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"disabled":true}}`)))).To(Succeed())
	waitReason(t, ns, canary.Name, "False/"+keygatev1.ReasonDisabled)
	index, _ := shardsOf(g, ns, "p")
	shard := index.Shards[bundle.ShardOf(c.KeyID, len(index.Shards))]
	g.Eventually(func(g Gomega) []string { return shardKeyIDs(g, ns, shard) }, timeout, interval).ShouldNot(ContainElement(c.KeyID))
	g.Eventually(func(g Gomega) {
		p := &keygatev1.TokenPolicy{}
		g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "p"}, p)).To(Succeed())
		g.Expect(p.Status.ApiKeys).To(BeEquivalentTo(keys - 1))
	}, timeout, interval).Should(Succeed())
	// Every key has been reconciled by the new manager (a pass writes, if
	// at all, before it is counted), and the policy at least once.
	g.Eventually(func(g Gomega) {
		g.Expect(reconcilesDone(g, "apikey") - apikeyPasses).To(BeNumerically(">=", keys))
		g.Expect(reconcilesDone(g, "tokenpolicy") - policyPasses).To(BeNumerically(">=", 1))
	}, timeout, interval).Should(Succeed())

	g.Expect(log.distinct()).To(ConsistOf(
		"PATCH /apis/keygate.dev/v1alpha1/namespaces/"+ns+"/apikeys/"+canary.Name+"/status",
		"PUT /api/v1/namespaces/"+ns+"/secrets/"+shard,
		"PATCH /apis/keygate.dev/v1alpha1/namespaces/"+ns+"/tokenpolicies/p/status",
	), "the restarted manager wrote only what the change after it concerns")
}
