package controllers

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

func TestSigningKeyRotationKeepsOldKey(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clk)
	policy := newPolicy(ns, "p", withSigning(keygatev1.EdDSA, time.Hour, 10*time.Minute))
	create(t, policy)
	var first bundle.SigningKey
	g.Eventually(func(g Gomega) {
		b, _ := bundleOf(g, ns, "p")
		g.Expect(b.SigningKeys).To(HaveLen(1))
		first = b.SigningKeys[0]
	}, timeout, interval).Should(Succeed())
	g.Expect(first.Algorithm).To(Equal("EdDSA"))

	// Scheduled rotation: a new current key, the old one verifying until
	// every token it signed (tokenTTL 10m) has expired.
	clk.Step(time.Hour + time.Second)
	rotatedAt := clk.Now()
	poke(t, policy)
	var second bundle.SigningKey
	g.Eventually(func(g Gomega) {
		b, _ := bundleOf(g, ns, "p")
		g.Expect(b.SigningKeys).To(HaveLen(2))
		second = b.SigningKeys[0]
		g.Expect(second.KeyID).NotTo(Equal(first.KeyID))
		g.Expect(second.RetiresAt).To(BeNil())
		old := b.SigningKeys[1]
		g.Expect(old.KeyID).To(Equal(first.KeyID))
		g.Expect(old.JWK).To(MatchJSON(first.JWK), "the old public key is still published")
		g.Expect(*old.RetiresAt).To(BeTemporally(">=", rotatedAt.Add(10*time.Minute)))
	}, timeout, interval).Should(Succeed())
	g.Eventually(func(g Gomega) string { return policyStatus(g, ns, "p").SigningKeyID }, timeout, interval).Should(Equal(second.KeyID))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "p") }, timeout, interval).Should(ContainElement(keygatev1.ReasonSigningRotated))

	// Changing the algorithm rotates at once; both older keys still verify.
	p := &keygatev1.TokenPolicy{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKeyFromObject(policy), p)).To(Succeed())
	p.Spec.Signing.Algorithm = keygatev1.ES256
	g.Expect(k8sClient.Update(context.Background(), p)).To(Succeed())
	g.Eventually(func(g Gomega) []string {
		b, _ := bundleOf(g, ns, "p")
		var algs []string
		for _, k := range b.SigningKeys {
			algs = append(algs, k.Algorithm)
		}
		return algs
	}, timeout, interval).Should(Equal([]string{"ES256", "EdDSA", "EdDSA"}))

	// Once their tokens have expired the retired keys go.
	clk.Step(11 * time.Minute)
	poke(t, policy)
	g.Eventually(func(g Gomega) int { b, _ := bundleOf(g, ns, "p"); return len(b.SigningKeys) }, timeout, interval).Should(Equal(1))
}

func TestBundleNeverHoldsClearSecret(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"))
	names := []string{"k1", "k2", "k3", "k4", "k5"}
	for _, n := range names {
		create(t, newApiKey(ns, n, "p", withRotation(0, time.Hour)))
	}
	for _, n := range names {
		waitReason(t, ns, n, "True/Ready")
	}
	var secrets []string
	for _, n := range names {
		c, _ := getCreds(g, ns, n+"-credentials")
		secrets = append(secrets, c.Secret)
	}
	// Rotate two keys so that previous secrets (in grace) are bundled too.
	for _, n := range names[:2] {
		g.Expect(k8sClient.Patch(context.Background(), getApiKey(g, ns, n), client.RawPatch(types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"keygate.dev/rotate":"now"}}}`)))).To(Succeed())
	}
	g.Eventually(func(g Gomega) int {
		n := 0
		for _, d := range bundleDigests(g, ns, "p") {
			n += len(d)
		}
		return n
	}, timeout, interval).Should(Equal(7))
	for _, n := range names {
		c, _ := getCreds(g, ns, n+"-credentials")
		secrets = append(secrets, c.Secret)
	}
	_, raw := bundleOf(g, ns, "p")
	for _, s := range secrets {
		for _, form := range clearForms(s) {
			g.Expect(strings.Contains(string(raw), form)).To(BeFalse(), "bundle holds a secret in clear")
		}
	}
}

// clearForms are the ways a secret could leak: as is, base64, or in an Authorization value.
func clearForms(secret string) []string {
	return []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), base64.RawStdEncoding.EncodeToString([]byte(secret)),
		base64.StdEncoding.EncodeToString([]byte(":" + secret))[4:]}
}

func TestRevocationPruning(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	m := startManager(t, ns, clk)
	policy := newPolicy(ns, "p")
	create(t, policy)
	cm := &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: ns, Name: "keygate-p-revocations"}
	g.Eventually(func() error { return k8sClient.Get(context.Background(), key, cm) }, timeout, interval).Should(Succeed())
	g.Expect(cm.Labels).To(HaveKeyWithValue(keygatev1.LabelTokenPolicy, "p"))

	now := clk.Now().UTC()
	patch := `{"data":{"expired":"` + now.Add(-time.Minute).Format(time.RFC3339) + `","live":"` + now.Add(5*time.Minute).Format(time.RFC3339) + `"}}`
	g.Expect(k8sClient.Patch(context.Background(), cm, client.RawPatch(types.MergePatchType, []byte(patch)))).To(Succeed())
	g.Eventually(func(g Gomega) map[string]string {
		g.Expect(k8sClient.Get(context.Background(), key, cm)).To(Succeed())
		return cm.Data
	}, timeout, interval).Should(And(HaveKey("live"), Not(HaveKey("expired"))))

	// The reconciler wakes up when the next revoked token expires.
	r := &TokenPolicyReconciler{Client: m.client, Clock: clk, Recorder: discardRecorder{}}
	res, err := r.Reconcile(context.Background(), reconcileRequest(ns, "p"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(BeNumerically("~", 5*time.Minute+bundle.TokenLeeway, 2*time.Second))

	clk.Step(6 * time.Minute)
	poke(t, policy)
	g.Eventually(func(g Gomega) map[string]string {
		g.Expect(k8sClient.Get(context.Background(), key, cm)).To(Succeed())
		return cm.Data
	}, timeout, interval).Should(BeEmpty())
}

func TestNoSecretInLogsOrEvents(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p"), newApiKey(ns, "k", "p"), newApiKey(ns, "gone", "nope"))
	waitReason(t, ns, "k", "True/Ready")
	c1, _ := getCreds(g, ns, "k-credentials")
	g.Expect(k8sClient.Patch(context.Background(), getApiKey(g, ns, "k"), client.RawPatch(types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"keygate.dev/rotate":"1"}}}`)))).To(Succeed())
	g.Eventually(func(g Gomega) int64 { return getApiKey(g, ns, "k").Status.SecretVersion }, timeout, interval).Should(BeEquivalentTo(2))
	c2, s := getCreds(g, ns, "k-credentials")
	g.Expect(k8sClient.Delete(context.Background(), s)).To(Succeed())
	g.Eventually(func(g Gomega) int64 { return getApiKey(g, ns, "k").Status.SecretVersion }, timeout, interval).Should(BeEquivalentTo(3))
	c3, _ := getCreds(g, ns, "k-credentials")
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "k") }, timeout, interval).
		Should(ContainElements(keygatev1.ReasonRotated, keygatev1.ReasonSecretReplaced))

	var texts []string
	texts = append(texts, logs.String())
	for _, e := range eventsOf(g, ns) {
		texts = append(texts, e.Note, e.Reason)
	}
	for _, name := range []string{"k", "gone"} {
		for _, c := range getApiKey(g, ns, name).Status.Conditions {
			texts = append(texts, c.Message)
		}
	}
	g.Expect(logs.String()).To(ContainSubstring("Created credentials Secret"), "the log capture works")
	for _, c := range []creds{c1, c2, c3} {
		for _, form := range append(clearForms(c.Secret), strings.TrimPrefix(c.Authorization, "Basic ")) {
			for _, text := range texts {
				g.Expect(strings.Contains(text, form)).To(BeFalse(), "a secret leaked into logs, Events or status")
			}
		}
	}
}

func TestBundleNotRewrittenWithoutChange(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	policy := newPolicy(ns, "p")
	create(t, policy, newApiKey(ns, "k", "p"))
	waitReason(t, ns, "k", "True/Ready")
	g.Eventually(func(g Gomega) int { return len(bundleDigests(g, ns, "p")) }, timeout, interval).Should(Equal(1))
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "keygate-p"}, s)).To(Succeed())
	rv := s.ResourceVersion
	poke(t, policy, getApiKey(g, ns, "k"))
	// A no-op pass has to finish before the check means anything: wait for a
	// change made after the poke to land, then compare.
	create(t, newApiKey(ns, "other", "elsewhere"))
	waitReason(t, ns, "other", "False/PolicyNotFound")
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "keygate-p"}, s)).To(Succeed())
	g.Expect(s.ResourceVersion).To(Equal(rv))
}

// Helpers shared by the test files.

func readyConditionOf(g Gomega, ns, name string) metav1.Condition {
	c := meta.FindStatusCondition(getApiKey(g, ns, name).Status.Conditions, keygatev1.ConditionReady)
	g.Expect(c).NotTo(BeNil())
	return *c
}

func bundleNames(g Gomega, ns, policy string) []string {
	b, _ := bundleOf(g, ns, policy)
	var out []string
	for _, k := range b.Keys {
		out = append(out, k.Name)
	}
	return out
}

func bundleDigestsFrom(g Gomega, raw []byte) map[string][][]byte {
	b, err := bundle.Parse(raw)
	g.Expect(err).NotTo(HaveOccurred())
	out := map[string][][]byte{}
	for _, k := range b.Keys {
		for _, s := range k.Secrets {
			out[k.KeyID] = append(out[k.KeyID], s.Digest)
		}
	}
	return out
}

func policyStatus(g Gomega, ns, name string) keygatev1.TokenPolicyStatus {
	p := &keygatev1.TokenPolicy{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, p)).To(Succeed())
	return p.Status
}

func reconcileRequest(ns, name string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}
}

// discardRecorder drops Events; for reconcilers called directly by a test.
type discardRecorder struct{ recorder.EventRecorder }

func (discardRecorder) Eventf(runtime.Object, runtime.Object, string, string, string, string, ...any) {
}

// A create that fails because the name is taken is a conflict only when the
// Secret is someone else's; our own Secret that the cache has not seen yet
// is retried.
func TestAlreadyExistsTellsOwnFromForeign(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	key := newApiKey(ns, "k", "p")
	create(t, key)
	own := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "own"}}
	g.Expect(controllerutil.SetControllerReference(key, own, scheme)).To(Succeed())
	create(t, own, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "foreign"}})
	r := &ApiKeyReconciler{Client: k8sClient, APIReader: k8sClient, Recorder: discardRecorder{}}

	err := r.alreadyExists(context.Background(), key, "own")
	g.Expect(err).To(HaveOccurred())
	g.Expect(errors.Is(err, errSecretConflict)).To(BeFalse(), "our own Secret is no conflict")
	g.Expect(errors.Is(err, errCacheBehind)).To(BeTrue(), "the pass ends quietly and is retried")
	g.Expect(errors.Is(err, reconcile.TerminalError(nil))).To(BeFalse(), "it is retried")

	err = r.alreadyExists(context.Background(), key, "foreign")
	g.Expect(errors.Is(err, errSecretConflict)).To(BeTrue())
	g.Expect(errors.Is(err, reconcile.TerminalError(nil))).To(BeTrue())
	g.Expect(meta.FindStatusCondition(key.Status.Conditions, keygatev1.ConditionStalled).Reason).To(Equal(keygatev1.ReasonSecretConflict))
}
