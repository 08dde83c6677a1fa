package controllers

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestBundleCarriesEnforcementAndRateLimits: enforcement and the rate limits
// of the policy, a key and a client reach the bundle with defaults applied,
// and the policy's status shows the mode.
func TestBundleCarriesEnforcementAndRateLimits(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	policy := newPolicy(ns, "p", func(p *keygatev1.TokenPolicy) {
		p.Spec.Enforcement = keygatev1.EnforcementAudit
		p.Spec.RateLimit = &keygatev1.RateLimit{Requests: 50, Per: &metav1.Duration{Duration: time.Minute}}
	})
	create(t, policy)
	create(t, newApiKey(ns, "k", "p", func(k *keygatev1.ApiKey) {
		k.Spec.Permissions = []keygatev1.Permission{"charges:List"}
		k.Spec.RateLimit = &keygatev1.RateLimit{Requests: 5, Burst: ptr.To[int32](10)}
		k.Spec.Clients = []keygatev1.ApiKeyClient{{Key: "acme", RateLimit: &keygatev1.RateLimit{Requests: 1, Per: &metav1.Duration{Duration: time.Hour}}}}
	}))
	g.Eventually(func(g Gomega) {
		b, _ := bundleOf(g, ns, "p")
		g.Expect(b.Policy.Enforcement).To(Equal(bundle.EnforcementAudit))
		g.Expect(b.Policy.RateLimit).To(Equal(&bundle.RateLimit{Requests: 50, PerMillis: 60000, Burst: 50}))
		g.Expect(b.Keys).To(HaveLen(1))
		g.Expect(b.Keys[0].RateLimit).To(Equal(&bundle.RateLimit{Requests: 5, PerMillis: 1000, Burst: 10}))
		g.Expect(b.Keys[0].Clients).To(HaveLen(1))
		g.Expect(b.Keys[0].Clients[0].RateLimit).To(Equal(&bundle.RateLimit{Requests: 1, PerMillis: 3600000, Burst: 1}))
		g.Expect(policyStatus(g, ns, "p").Enforcement).To(Equal(keygatev1.EnforcementAudit))
	}, timeout, interval).Should(Succeed())

	// Back to Enforce: the bundle leaves the field out, the status says so.
	g.Expect(k8sClient.Patch(context.Background(), policy,
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"enforcement":"Enforce"}}`)))).To(Succeed())
	g.Eventually(func(g Gomega) {
		b, _ := bundleOf(g, ns, "p")
		g.Expect(b.Policy.Enforcement).To(BeEmpty())
		g.Expect(policyStatus(g, ns, "p").Enforcement).To(Equal(keygatev1.EnforcementEnforce))
	}, timeout, interval).Should(Succeed())
}

// TestBundleCarriesRequireTLS: tokenEndpoint.requireTLS reaches the bundle,
// and is left out of it when false (existing bundles keep their bytes).
func TestBundleCarriesRequireTLS(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	policy := newPolicy(ns, "p", func(p *keygatev1.TokenPolicy) { p.Spec.TokenEndpoint.RequireTLS = true })
	create(t, policy)
	g.Eventually(func(g Gomega) {
		b, raw := bundleOf(g, ns, "p")
		g.Expect(b.Policy.RequireTLS).To(BeTrue())
		g.Expect(string(raw)).To(ContainSubstring(`"requireTLS":true`))
	}, timeout, interval).Should(Succeed())

	g.Expect(k8sClient.Patch(context.Background(), policy,
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"tokenEndpoint":{"requireTLS":false}}}`)))).To(Succeed())
	g.Eventually(func(g Gomega) {
		b, raw := bundleOf(g, ns, "p")
		g.Expect(b.Policy.RequireTLS).To(BeFalse())
		g.Expect(string(raw)).NotTo(ContainSubstring("requireTLS"))
	}, timeout, interval).Should(Succeed())
}
