package controllers

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// staleApiKey answers Gets of one ApiKey from a snapshot, as the manager's
// cache does before the watch event of the reconciler's own last status
// write arrives; everything else goes to the client.
type staleApiKey struct {
	client.Client
	snapshot *keygatev1.ApiKey
}

func (s staleApiKey) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if k, ok := obj.(*keygatev1.ApiKey); ok && key.Name == s.snapshot.Name && key.Namespace == s.snapshot.Namespace {
		s.snapshot.DeepCopyInto(k)
		return nil
	}
	return s.Client.Get(ctx, key, obj, opts...)
}

// A pass that starts from a cached status older than the server's must not
// leave the server's status wrong: the rotating pass wrote NotInBundle
// (version 2), the bundle then carried the new secret and re-queued the key
// while the cache still showed the status before the rotation (Ready,
// version 1). A merge patch against that base sends the new version but not
// the conditions (the same in base and result), and the server kept
// NotInBundle with nothing to re-queue the key. The status patch carries the
// base's resourceVersion: a stale base is refused (a conflict, retried) and
// the next pass, on a fresh cache, writes Ready.
func TestStatusFromAStaleCacheIsNotLost(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	m := startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"), newApiKey(ns, "k", "p"))
	waitReason(t, ns, "k", "True/Ready")
	before := getApiKey(g, ns, "k") // Ready, version 1: what a lagging cache shows
	c1, _ := getCreds(g, ns, "k-credentials")

	key := before.DeepCopy()
	patch := client.MergeFrom(key.DeepCopy())
	key.Annotations = map[string]string{keygatev1.AnnotationRotate: "now"}
	g.Expect(k8sClient.Patch(context.Background(), key, patch)).To(Succeed())
	g.Eventually(func(g Gomega) int64 { return getApiKey(g, ns, "k").Status.SecretVersion }, timeout, interval).Should(BeEquivalentTo(2))
	c2, _ := getCreds(g, ns, "k-credentials")
	waitDigests(t, ns, "p", c2.KeyID, c2.Secret, c1.Secret)
	m.stop()

	// The server as the rotating pass left it: NotInBundle at version 2.
	key = getApiKey(g, ns, "k")
	meta.SetStatusCondition(&key.Status.Conditions, metav1.Condition{Type: keygatev1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: keygatev1.ReasonNotInBundle, Message: "written by the rotating pass", ObservedGeneration: key.Generation})
	g.Expect(k8sClient.Status().Update(context.Background(), key)).To(Succeed())

	// The next pass reads the key from a cache still at the status before
	// the rotation (with the rotation's annotation, already handled).
	stale := before.DeepCopy()
	stale.Annotations = map[string]string{keygatev1.AnnotationRotate: "now"}
	c := startCache(t, ns)
	g.Eventually(func(g Gomega) {
		nn := types.NamespacedName{Namespace: ns, Name: "k-credentials"}
		live, cached := &corev1.Secret{}, &corev1.Secret{}
		g.Expect(k8sClient.Get(context.Background(), nn, live)).To(Succeed())
		g.Expect(c.Get(context.Background(), nn, cached)).To(Succeed())
		g.Expect(cached.ResourceVersion).To(Equal(live.ResourceVersion))
	}, timeout, interval).Should(Succeed())
	r := &ApiKeyReconciler{Client: staleApiKey{Client: c, snapshot: stale}, Clock: clock.RealClock{}, Recorder: discardRecorder{}}
	_, err := r.Reconcile(context.Background(), reconcileRequest(ns, "k"))
	if err == nil {
		g.Expect(readyReasonOf(g, ns, "k")).To(Equal("True/Ready"), "a pass that reports success left the server's status as it was")
	}

	// A pass on a cache that caught up writes Ready.
	fresh := &ApiKeyReconciler{Client: c, Clock: clock.RealClock{}, Recorder: discardRecorder{}}
	g.Eventually(func(g Gomega) string {
		_, err := fresh.Reconcile(context.Background(), reconcileRequest(ns, "k"))
		g.Expect(err).NotTo(HaveOccurred())
		return readyReasonOf(g, ns, "k")
	}, 10*time.Second, interval).Should(Equal("True/Ready"))
}
