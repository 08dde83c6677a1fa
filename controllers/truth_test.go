package controllers

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// An ApiKey is Ready only when the bundle its sidecars read carries its
// current secret. The reconcilers run by hand, one pass at a time, so each
// state between two bundle writes is observed.
func TestReadyOnlyWhenInBundle(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	create(t, newPolicy(ns, "p"), newApiKey(ns, "k", "p", withRotation(0, 0)))
	c := startCache(t, ns)
	clk := clocktesting.NewFakeClock(time.Now())
	counted := &countingClient{Client: c}
	ak := &ApiKeyReconciler{Client: counted, APIReader: k8sClient, Clock: clk, Recorder: discardRecorder{}}
	tp := &TokenPolicyReconciler{Client: c, Clock: clock.RealClock{}, Recorder: discardRecorder{}}
	// Each pass reads what the previous one wrote: wait for the cache to see
	// the API server's current state of the objects involved.
	synced := func() {
		g.Eventually(func(g Gomega) {
			for _, pair := range []struct {
				obj  client.Object
				name string
			}{{&keygatev1.ApiKey{}, "k"}, {&keygatev1.TokenPolicy{}, "p"}, {&corev1.Secret{}, "k-credentials"}, {&corev1.Secret{}, "keygate-p"}} {
				live, cached := pair.obj.DeepCopyObject().(client.Object), pair.obj
				nn := types.NamespacedName{Namespace: ns, Name: pair.name}
				errLive := k8sClient.Get(context.Background(), nn, live)
				errCached := c.Get(context.Background(), nn, cached)
				g.Expect(apierrors.IsNotFound(errLive)).To(Equal(apierrors.IsNotFound(errCached)))
				g.Expect(cached.GetResourceVersion()).To(Equal(live.GetResourceVersion()))
			}
		}, timeout, interval).Should(Succeed())
	}
	reconcileKey := func() string {
		synced()
		_, err := ak.Reconcile(context.Background(), reconcileRequest(ns, "k"))
		g.Expect(err).NotTo(HaveOccurred())
		return readyReasonOf(g, ns, "k")
	}
	reconcilePolicy := func() {
		synced()
		_, err := tp.Reconcile(context.Background(), reconcileRequest(ns, "p"))
		g.Expect(err).NotTo(HaveOccurred())
	}

	// A new key's first status waits for the bundle a little (one write instead of two)...
	synced()
	res, err := ak.Reconcile(context.Background(), reconcileRequest(ns, "k"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(getApiKey(g, ns, "k").Status.Conditions).To(BeEmpty())
	g.Expect(res.RequeueAfter).To(BeNumerically(">", 0))
	g.Expect(res.RequeueAfter).To(BeNumerically("<=", newKeyStatusDelay))
	// ...but not for long.
	clk.Step(newKeyStatusDelay + time.Second)
	g.Expect(reconcileKey()).To(Equal("False/NotInBundle"), "no bundle published yet")
	g.Expect(readyConditionOf(g, ns, "k").Message).To(ContainSubstring("has not been published yet"))
	reconcilePolicy()
	g.Expect(reconcileKey()).To(Equal("True/Ready"))

	// A rotation: the new secret is not Ready until the bundle carries it.
	before, _ := getCreds(g, ns, "k-credentials")
	g.Expect(k8sClient.Patch(context.Background(), getApiKey(g, ns, "k"), client.RawPatch(types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"keygate.dev/rotate":"1"}}}`)))).To(Succeed())
	g.Expect(reconcileKey()).To(Equal("False/NotInBundle"))
	after, _ := getCreds(g, ns, "k-credentials")
	g.Expect(after.Secret).NotTo(Equal(before.Secret))
	g.Expect(bundleDigests(g, ns, "p")[after.KeyID]).To(Equal([][]byte{digestOf(g, ns, "p", before.Secret)}), "the bundle still holds the old secret")
	reconcilePolicy()
	g.Expect(reconcileKey()).To(Equal("True/Ready"))
	g.Expect(bundleDigests(g, ns, "p")[after.KeyID]).To(Equal([][]byte{digestOf(g, ns, "p", after.Secret)}))

	// A pass that changes nothing writes nothing, and no ApiKey pass lists
	// the policy's other keys (what made a policy's keys cost O(n²)).
	patches := counted.statusPatches.Load()
	g.Expect(patches).To(BeNumerically(">=", 3), "NotInBundle, Ready, NotInBundle after the rotation, Ready")
	g.Expect(reconcileKey()).To(Equal("True/Ready"))
	g.Expect(counted.statusPatches.Load()).To(Equal(patches))
	g.Expect(counted.lists.Load()).To(BeZero())
}

// countingClient counts the Lists and status patches made through it.
type countingClient struct {
	client.Client
	lists, statusPatches atomic.Int32
}

func (c *countingClient) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	c.lists.Add(1)
	return c.Client.List(ctx, list, opts...)
}

func (c *countingClient) Status() client.SubResourceWriter {
	return countingStatus{SubResourceWriter: c.Client.Status(), c: c}
}

type countingStatus struct {
	client.SubResourceWriter
	c *countingClient
}

func (s countingStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	s.c.statusPatches.Add(1)
	return s.SubResourceWriter.Patch(ctx, obj, patch, opts...)
}

// When the accepted keys do not all fit in the bundle Secret, the operator
// publishes the oldest that fit: keys left out are not Ready, and removals
// (disable, delete) still reach the sidecars.
func TestFullBundleStillPublishesRemovals(t *testing.T) {
	g := NewWithT(t)
	saved := maxBundleBytes
	maxBundleBytes = 2 << 10 // set before the manager starts, restored after it stops
	t.Cleanup(func() { maxBundleBytes = saved })
	ns := newNamespace(t)
	m := startManager(t, ns, clock.RealClock{})
	t.Cleanup(m.stop)
	create(t, newPolicy(ns, "p"))
	var all []string
	for i := range 16 {
		name := fmt.Sprintf("k%02d", i)
		all = append(all, name)
		create(t, newApiKey(ns, name, "p"))
	}
	g.Eventually(func(g Gomega) string {
		c := meta.FindStatusCondition(policyStatus(g, ns, "p").Conditions, keygatev1.ConditionReady)
		g.Expect(c).NotTo(BeNil())
		return string(c.Status) + "/" + c.Reason
	}, timeout, interval).Should(Equal("False/" + keygatev1.ReasonBundleTooLarge))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "p") }, timeout, interval).Should(ContainElement(keygatev1.ReasonBundleTooLarge))

	// Every key is Ready exactly when the published bundle carries it.
	waitTruth := func() (in []string) {
		g.Eventually(func(g Gomega) {
			in = bundleNames(g, ns, "p")
			g.Expect(len(in)).To(BeNumerically(">", 1))
			g.Expect(len(in)).To(BeNumerically("<", len(all)))
			for _, name := range all {
				if !exists(g, ns, name) {
					continue
				}
				want := "False/" + keygatev1.ReasonBundleTooLarge
				switch {
				case contains(in, name):
					want = "True/Ready"
				case getApiKey(g, ns, name).Spec.Disabled:
					want = "False/" + keygatev1.ReasonDisabled
				}
				g.Expect(readyReasonOf(g, ns, name)).To(Equal(want), "ApiKey %s", name)
			}
			c := meta.FindStatusCondition(policyStatus(g, ns, "p").Conditions, keygatev1.ConditionReady)
			g.Expect(c.Message).To(ContainSubstring(fmt.Sprintf("Only %d of the", len(in))))
		}, timeout, interval).Should(Succeed())
		return in
	}
	in := waitTruth()
	g.Expect(readyConditionOf(g, ns, all[len(all)-1]).Message).To(ContainSubstring("is full"))

	// Disable one bundled key and delete another: both leave the published bundle.
	disabled, deleted := in[0], in[1]
	cd, _ := getCreds(g, ns, disabled+"-credentials")
	cx, _ := getCreds(g, ns, deleted+"-credentials")
	key := getApiKey(g, ns, disabled)
	key.Spec.Disabled = true
	g.Expect(k8sClient.Update(context.Background(), key)).To(Succeed())
	g.Expect(k8sClient.Delete(context.Background(), getApiKey(g, ns, deleted))).To(Succeed())
	g.Eventually(func(g Gomega) map[string][][]byte { return bundleDigests(g, ns, "p") }, timeout, interval).
		ShouldNot(Or(HaveKey(cd.KeyID), HaveKey(cx.KeyID)))
	now := waitTruth()
	g.Expect(now).NotTo(ContainElements(disabled, deleted))
	g.Expect(len(now)).To(BeNumerically(">=", len(in)), "the freed space lets the next waiting keys in")
}

func exists(g Gomega, ns, name string) bool {
	err := k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &keygatev1.ApiKey{})
	g.Expect(client.IgnoreNotFound(err)).To(Succeed())
	return err == nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// startCache runs a manager with the reconcilers' cache and index but no
// controllers, so a test drives the reconcilers one pass at a time.
func startCache(t *testing.T, ns string) client.Client {
	t.Helper()
	return startIndexedManager(t, ns).GetClient()
}

// startIndexedManager starts a manager of namespace ns with the ApiKey
// indexes and no reconcilers, its cache synced.
func startIndexedManager(t *testing.T, ns string) ctrl.Manager {
	t.Helper()
	mgr := newTestManager(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	if err := indexPolicyRefs(ctx, mgr.GetFieldIndexer()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		t.Fatal("cache did not sync")
	}
	return mgr
}
