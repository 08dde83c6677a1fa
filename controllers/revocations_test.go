package controllers

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// staleConfigMaps answers Gets of ConfigMaps from a snapshot, as the
// manager's cache does before a watch event arrives; everything else goes
// to the API server.
type staleConfigMaps struct {
	client.Client
	snapshot *corev1.ConfigMap
}

func (s staleConfigMaps) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if cm, ok := obj.(*corev1.ConfigMap); ok && key.Name == s.snapshot.Name && key.Namespace == s.snapshot.Namespace {
		s.snapshot.DeepCopyInto(cm)
		return nil
	}
	return s.Client.Get(ctx, key, obj, opts...)
}

// TestPruneKeepsRevocationsAddedSinceTheCacheWasRead is issue 18's loss,
// made deterministic: the operator's cached copy of the revocations
// ConfigMap holds only expired entries, while a sidecar has meanwhile
// added (and acknowledged) a revocation. Pruning must delete the expired
// entries only; a merge patch computed from the cached object was
// {"data":null} and deleted the sidecar's entry too.
func TestPruneKeepsRevocationsAddedSinceTheCacheWasRead(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	// The running manager (real clock) finds nothing expired and so never
	// prunes; the reconciler under test runs two hours later by its clock.
	m := startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"))
	key := types.NamespacedName{Namespace: ns, Name: "keygate-p-revocations"}
	cm := &corev1.ConfigMap{}
	g.Eventually(func() error { return k8sClient.Get(context.Background(), key, cm) }, timeout, interval).Should(Succeed())

	now := time.Now().UTC()
	later := clocktesting.NewFakeClock(now.Add(2 * time.Hour))
	addEntry := func(jti string, exp time.Time) {
		patch := `{"data":{"` + jti + `":"` + exp.Format(time.RFC3339) + `"}}`
		g.Expect(k8sClient.Patch(context.Background(), cm, client.RawPatch(types.MergePatchType, []byte(patch)))).To(Succeed())
	}
	addEntry("expired", now.Add(time.Hour)) // by the time of the reconciler under test
	snapshot := &corev1.ConfigMap{}
	g.Expect(k8sClient.Get(context.Background(), key, snapshot)).To(Succeed())
	addEntry("acknowledged", now.Add(24*time.Hour)) // by a sidecar, after the snapshot

	r := &TokenPolicyReconciler{Client: staleConfigMaps{Client: m.client, snapshot: snapshot}, Clock: later, Recorder: discardRecorder{}}
	_, err := r.Reconcile(context.Background(), reconcileRequest(ns, "p"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(k8sClient.Get(context.Background(), key, cm)).To(Succeed())
	g.Expect(cm.Data).To(HaveKey("acknowledged"), "a revocation added after the cache was read survives the prune")
	g.Expect(cm.Data).NotTo(HaveKey("expired"), "the expired entry is pruned")
}

func TestRemoveKeysPatch(t *testing.T) {
	g := NewWithT(t)
	g.Expect(string(removeKeysPatch(map[string]string{"a": "1", "b": "2", "c": "3"}, map[string]string{"b": "2"}))).
		To(MatchJSON(`{"data":{"a":null,"c":null}}`))
	g.Expect(string(removeKeysPatch(map[string]string{"a": "1"}, map[string]string{}))).To(MatchJSON(`{"data":{"a":null}}`),
		"every entry expired: still names the keys, never data:null")
}
