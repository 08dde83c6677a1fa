package controllers

import (
	"context"
	"encoding/base64"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

func TestGeneratesCredentials(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "payments"),
		newApiKey(ns, "data-lake", "payments"),
		newApiKey(ns, "custom", "payments", withSecretName("my-creds")))
	waitReason(t, ns, "data-lake", "True/Ready")
	waitReason(t, ns, "custom", "True/Ready")

	for name, secretName := range map[string]string{"data-lake": "data-lake-credentials", "custom": "my-creds"} {
		key := getApiKey(g, ns, name)
		c, s := getCreds(g, ns, secretName)
		g.Expect(c.KeyID).To(MatchRegexp(keyIDPattern.String()))
		g.Expect(c.Secret).To(MatchRegexp(secretPattern.String()))
		g.Expect(c.Authorization).To(Equal("Basic " + base64.StdEncoding.EncodeToString([]byte(c.KeyID+":"+c.Secret))))
		g.Expect(metav1.IsControlledBy(s, key)).To(BeTrue(), "credentials Secret owned by the ApiKey")
		g.Expect(s.Labels).To(HaveKeyWithValue(keygatev1.LabelApiKey, name))
		g.Expect(s.Labels).To(HaveKeyWithValue(keygatev1.LabelManagedBy, keygatev1.ManagedByValue))
		g.Expect(key.Status.KeyID).To(Equal(c.KeyID))
		g.Expect(key.Status.SecretName).To(Equal(secretName))
		g.Expect(key.Status.SecretVersion).To(BeEquivalentTo(1))
		g.Expect(key.Status.LastRotationTime).NotTo(BeNil())
		g.Expect(key.Status.ObservedGeneration).To(Equal(key.Generation))
		waitDigests(t, ns, "payments", c.KeyID, c.Secret)
	}
	b, _ := bundleOf(g, ns, "payments")
	g.Expect(b.Keys[0].Permissions).To(ConsistOf("charges:List", "reports:All"))
	g.Eventually(func(g Gomega) {
		p := &keygatev1.TokenPolicy{}
		g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "payments"}, p)).To(Succeed())
		g.Expect(p.Status.ApiKeys).To(BeEquivalentTo(2))
		g.Expect(p.Status.BundleSecretName).To(Equal("keygate-payments"))
		g.Expect(p.Status.SigningKeyID).To(Equal(b.SigningKeys[0].KeyID))
		g.Expect(p.Status.ObservedGeneration).To(Equal(p.Generation))
	}, timeout, interval).Should(Succeed())
}

func TestRestartIsIdempotent(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	m := startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"), newApiKey(ns, "k", "p"))
	waitReason(t, ns, "k", "True/Ready")
	c1, s1 := getCreds(g, ns, "k-credentials")
	g.Eventually(func(g Gomega) [][]byte { return bundleDigests(g, ns, "p")[c1.KeyID] }, timeout, interval).ShouldNot(BeEmpty())
	_, bundle1 := bundleOf(g, ns, "p")
	m.stop()

	// Wipe the status while no manager runs: only a new reconciliation can restore it.
	key := getApiKey(g, ns, "k")
	key.Status = keygatev1.ApiKeyStatus{}
	g.Expect(k8sClient.Status().Update(context.Background(), key)).To(Succeed())

	startManager(t, ns, clock.RealClock{})
	waitReason(t, ns, "k", "True/Ready")
	create(t, newApiKey(ns, "k2", "p")) // proves the new manager rebuilt the bundle
	g.Eventually(func(g Gomega) int { b, _ := bundleOf(g, ns, "p"); return len(b.Keys) }, timeout, interval).Should(Equal(2))

	c2, s2 := getCreds(g, ns, "k-credentials")
	g.Expect(c2).To(Equal(c1), "secret unchanged by the restart")
	g.Expect(s2.ResourceVersion).To(Equal(s1.ResourceVersion), "credentials Secret not rewritten")
	key = getApiKey(g, ns, "k")
	g.Expect(key.Status.KeyID).To(Equal(c1.KeyID))
	g.Expect(key.Status.SecretVersion).To(BeEquivalentTo(1))
	g.Expect(bundleDigests(g, ns, "p")[c1.KeyID]).To(Equal(bundleDigestsFrom(g, bundle1)[c1.KeyID]))
}

func TestDeletedOrEditedSecretIsReplaced(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"), newApiKey(ns, "k", "p"))
	waitReason(t, ns, "k", "True/Ready")
	c1, s1 := getCreds(g, ns, "k-credentials")

	g.Expect(k8sClient.Delete(context.Background(), s1)).To(Succeed())
	var c2 creds
	g.Eventually(func(g Gomega) {
		c2, _ = getCreds(g, ns, "k-credentials")
		g.Expect(c2.Secret).NotTo(Equal(c1.Secret))
	}, timeout, interval).Should(Succeed())
	g.Expect(c2.KeyID).To(Equal(c1.KeyID), "the key ID survives a replacement")
	waitDigests(t, ns, "p", c1.KeyID, c2.Secret)
	g.Eventually(func(g Gomega) int64 { return getApiKey(g, ns, "k").Status.SecretVersion }, timeout, interval).Should(BeEquivalentTo(2))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "k") }, timeout, interval).Should(ContainElement(keygatev1.ReasonSecretReplaced))

	// A hand edit of the secret is a replacement too: the edited value never works.
	_, s2 := getCreds(g, ns, "k-credentials")
	s2.Data["secret"] = []byte("chosen-by-hand-chosen-by-hand-chosen-by-han")
	g.Expect(k8sClient.Update(context.Background(), s2)).To(Succeed())
	g.Eventually(func(g Gomega) int64 { return getApiKey(g, ns, "k").Status.SecretVersion }, timeout, interval).Should(BeEquivalentTo(3))
	c3, _ := getCreds(g, ns, "k-credentials")
	g.Expect(c3.Secret).To(MatchRegexp(secretPattern.String()))
	g.Expect(c3.Secret).NotTo(Equal(c2.Secret))
	waitDigests(t, ns, "p", c1.KeyID, c3.Secret)
}

func TestAnnotationRotationWithGrace(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clk)
	policy := newPolicy(ns, "p")
	key := newApiKey(ns, "k", "p", withRotation(0, time.Hour))
	create(t, policy, key)
	waitReason(t, ns, "k", "True/Ready")
	g.Eventually(func(g Gomega) int { return len(bundleDigests(g, ns, "p")) }, timeout, interval).Should(Equal(1))
	old, _ := getCreds(g, ns, "k-credentials")

	rotatedAt := clk.Now()
	g.Expect(k8sClient.Patch(context.Background(), key, client.RawPatch(types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"keygate.dev/rotate":"2026-11-23T10:00"}}}`)))).To(Succeed())
	var cur creds
	g.Eventually(func(g Gomega) {
		cur, _ = getCreds(g, ns, "k-credentials")
		g.Expect(cur.Secret).NotTo(Equal(old.Secret))
	}, timeout, interval).Should(Succeed())
	waitDigests(t, ns, "p", old.KeyID, cur.Secret, old.Secret)
	g.Eventually(func(g Gomega) {
		st := getApiKey(g, ns, "k").Status
		g.Expect(st.LastRotateRequest).To(Equal("2026-11-23T10:00"))
		g.Expect(st.SecretVersion).To(BeEquivalentTo(2))
		g.Expect(st.PreviousSecretExpiresAt).NotTo(BeNil())
		g.Expect(st.PreviousSecretExpiresAt.Time).To(BeTemporally("~", rotatedAt.Add(time.Hour), 2*time.Second))
	}, timeout, interval).Should(Succeed())
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "k") }, timeout, interval).Should(ContainElement(keygatev1.ReasonRotated))
	b, _ := bundleOf(g, ns, "p")
	g.Expect(b.Keys[0].Secrets[1].ExpiresAt).NotTo(BeNil())

	// The same annotation value again (a resync, a re-apply) does not rotate.
	poke(t, key)
	clk.Step(59 * time.Minute)
	poke(t, key, policy)
	g.Consistently(func(g Gomega) int { return len(bundleDigests(g, ns, "p")[old.KeyID]) }, time.Second, interval).Should(Equal(2))
	g.Expect(getApiKey(g, ns, "k").Status.SecretVersion).To(BeEquivalentTo(2))

	// Grace over: the old secret disappears from the bundle and the status.
	clk.Step(time.Minute + time.Second)
	poke(t, key, policy)
	waitDigests(t, ns, "p", old.KeyID, cur.Secret)
	g.Eventually(func(g Gomega) *metav1.Time { return getApiKey(g, ns, "k").Status.PreviousSecretExpiresAt }, timeout, interval).Should(BeNil())
	_, s := getCreds(g, ns, "k-credentials")
	g.Expect(s.Annotations).NotTo(HaveKey(annotationPreviousDigest))
}

func TestScheduledRotation(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	m := startManager(t, ns, clk)
	policy := newPolicy(ns, "p")
	key := newApiKey(ns, "k", "p", withRotation(time.Minute, 0))
	create(t, policy, key)
	waitReason(t, ns, "k", "True/Ready")
	old, _ := getCreds(g, ns, "k-credentials")

	// The reconciler asks to come back when the interval ends, not sooner.
	r := &ApiKeyReconciler{Client: m.client, Clock: clk, Recorder: discardRecorder{}}
	res, err := r.Reconcile(context.Background(), reconcileRequest(ns, "k"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(BeNumerically("~", time.Minute, 2*time.Second))

	clk.Step(time.Minute + time.Second)
	poke(t, key) // stands in for the RequeueAfter timer
	var cur creds
	g.Eventually(func(g Gomega) {
		cur, _ = getCreds(g, ns, "k-credentials")
		g.Expect(cur.Secret).NotTo(Equal(old.Secret))
	}, timeout, interval).Should(Succeed())
	// gracePeriod 0s: the old secret stops working at once.
	waitDigests(t, ns, "p", old.KeyID, cur.Secret)
	g.Eventually(func(g Gomega) int64 { return getApiKey(g, ns, "k").Status.SecretVersion }, timeout, interval).Should(BeEquivalentTo(2))
	g.Expect(getApiKey(g, ns, "k").Status.PreviousSecretExpiresAt).To(BeNil())
}

func TestExpiry(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	m := startManager(t, ns, clk)
	policy := newPolicy(ns, "p")
	expires := clk.Now().Add(10 * time.Minute).Truncate(time.Second)
	key := newApiKey(ns, "k", "p", withExpiry(expires))
	create(t, policy, key)
	waitReason(t, ns, "k", "True/Ready")
	g.Eventually(func(g Gomega) int { return len(bundleDigests(g, ns, "p")) }, timeout, interval).Should(Equal(1))
	b, _ := bundleOf(g, ns, "p")
	g.Expect(b.Keys[0].ExpiresAt).NotTo(BeNil())
	g.Expect(b.Keys[0].ExpiresAt.Equal(expires)).To(BeTrue())
	g.Expect(getApiKey(g, ns, "k").Status.ExpiresAt.Time.Equal(expires)).To(BeTrue())

	r := &ApiKeyReconciler{Client: m.client, Clock: clk, Recorder: discardRecorder{}}
	res, err := r.Reconcile(context.Background(), reconcileRequest(ns, "k"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(BeNumerically("~", 10*time.Minute, 2*time.Second), "wakes up at expiry")

	clk.Step(11 * time.Minute)
	poke(t, key, policy)
	waitReason(t, ns, "k", "False/Expired")
	g.Eventually(func(g Gomega) int { return len(bundleDigests(g, ns, "p")) }, timeout, interval).Should(Equal(0))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "k") }, timeout, interval).Should(ContainElement(keygatev1.ReasonExpired))
}

func TestDisable(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"), newApiKey(ns, "k", "p"))
	waitReason(t, ns, "k", "True/Ready")
	g.Eventually(func(g Gomega) int { return len(bundleDigests(g, ns, "p")) }, timeout, interval).Should(Equal(1))

	setDisabled := func(v bool) {
		key := getApiKey(g, ns, "k")
		key.Spec.Disabled = v
		g.Expect(k8sClient.Update(context.Background(), key)).To(Succeed())
	}
	setDisabled(true)
	waitReason(t, ns, "k", "False/Disabled")
	g.Eventually(func(g Gomega) int { return len(bundleDigests(g, ns, "p")) }, timeout, interval).Should(Equal(0))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "k") }, timeout, interval).Should(ContainElement(keygatev1.ReasonDisabled))

	setDisabled(false)
	waitReason(t, ns, "k", "True/Ready")
	g.Eventually(func(g Gomega) int { return len(bundleDigests(g, ns, "p")) }, timeout, interval).Should(Equal(1))
}

func TestMissingPolicyThenCreated(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newApiKey(ns, "k", "later"))
	waitReason(t, ns, "k", "False/PolicyNotFound")
	c := readyConditionOf(g, ns, "k")
	g.Expect(c.Message).To(ContainSubstring(`TokenPolicy "later" does not exist`))

	create(t, newPolicy(ns, "later"))
	waitReason(t, ns, "k", "True/Ready")
	cr, _ := getCreds(g, ns, "k-credentials")
	waitDigests(t, ns, "later", cr.KeyID, cr.Secret)
}

func TestLimitExceededThenKeyDeleted(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p", withMaxApiKeys(2)))
	for _, name := range []string{"a", "b", "c"} {
		create(t, newApiKey(ns, name, "p"))
		waitReason(t, ns, name, map[string]string{"a": "True/Ready", "b": "True/Ready", "c": "False/LimitExceeded"}[name])
	}
	g.Expect(readyConditionOf(g, ns, "c").Message).To(ContainSubstring("at most 2 ApiKeys"))
	g.Eventually(func(g Gomega) []string { return bundleNames(g, ns, "p") }, timeout, interval).Should(ConsistOf("a", "b"))

	g.Expect(k8sClient.Delete(context.Background(), getApiKey(g, ns, "a"))).To(Succeed())
	waitReason(t, ns, "c", "True/Ready")
	g.Eventually(func(g Gomega) []string { return bundleNames(g, ns, "p") }, timeout, interval).Should(ConsistOf("b", "c"))
}

func TestSecretConflict(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	theirs := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken"}, StringData: map[string]string{"password": "x"}}
	create(t, newPolicy(ns, "p"), theirs, newApiKey(ns, "k", "p", withSecretName("taken")))
	waitReason(t, ns, "k", "False/SecretConflict")
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(theirs), s)).To(Succeed())
	g.Expect(s.Data).To(Equal(map[string][]byte{"password": []byte("x")}), "someone else's Secret is left alone")
	g.Expect(s.OwnerReferences).To(BeEmpty())
}

func TestSecretNameChangeMovesCredentials(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"), newApiKey(ns, "k", "p"))
	waitReason(t, ns, "k", "True/Ready")
	before, _ := getCreds(g, ns, "k-credentials")

	key := getApiKey(g, ns, "k")
	key.Spec.SecretName = "renamed"
	g.Expect(k8sClient.Update(context.Background(), key)).To(Succeed())
	g.Eventually(func(g Gomega) creds { c, _ := getCreds(g, ns, "renamed"); return c }, timeout, interval).Should(Equal(before),
		"the same key ID and secret under the new name")
	g.Eventually(func() bool {
		err := k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "k-credentials"}, &corev1.Secret{})
		return apierrors.IsNotFound(err)
	}, timeout, interval).Should(BeTrue(), "the old Secret is removed")
	g.Eventually(func(g Gomega) string { return getApiKey(g, ns, "k").Status.SecretName }, timeout, interval).Should(Equal("renamed"))
	g.Expect(getApiKey(g, ns, "k").Status.SecretVersion).To(BeEquivalentTo(1))
	waitDigests(t, ns, "p", before.KeyID, before.Secret)
}
