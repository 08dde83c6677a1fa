package e2e

import (
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestRateLimitThenAudit: a key's rateLimit reaches a real sidecar through
// the operator's bundle (429 with the draft's headers past the burst); the
// policy switched to Audit forwards the same refusals with
// X-Keygate-Decision, forged identity and decision headers never reach the
// workload, and the policy's status says Audit.
func TestRateLimitThenAudit(t *testing.T) {
	g := NewWithT(t)
	const name = "limited"
	g.Expect(createPolicy(t.Context(), name, keygatev1.TokenPolicySpec{
		Rules: []keygatev1.Rule{{Methods: []string{"GET"}, Paths: []keygatev1.URLPath{"/charges"}, Permission: "charges:List"}},
	})).To(Succeed())
	creds := createKey(t, "limited-key", keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: name},
		Permissions: []keygatev1.Permission{"charges:List"},
		RateLimit:   &keygatev1.RateLimit{Requests: 3, Per: &metav1.Duration{Duration: time.Hour}}})
	sc := startSidecarFor(t, "sidecar-limited", name)

	// waitWorks spends one request of the hour's 3; spend the rest, then 429.
	sc.waitWorks(creds)
	passed := 0
	for i := 0; i < 10 && sc.status("/charges", creds.authorization) == http.StatusOK; i++ {
		passed++
	}
	g.Expect(passed).To(Equal(2), "requests after the first within a burst of 3")
	r := sc.get("/charges", creds.authorization)
	g.Expect(r.status).To(Equal(http.StatusTooManyRequests), r.raw)
	g.Expect(r.header.Get("RateLimit-Policy")).To(Equal(`"keygate";q=3;w=3600`))
	g.Expect(r.header.Get("Retry-After")).NotTo(BeEmpty())
	g.Expect(r.body).To(HaveKeyWithValue("error", "too_many_requests"))

	tp := &keygatev1.TokenPolicy{}
	g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, tp)).To(Succeed())
	g.Expect(tp.Status.Enforcement).To(Equal(keygatev1.EnforcementEnforce))
	patch := client.MergeFrom(tp.DeepCopy())
	tp.Spec.Enforcement = keygatev1.EnforcementAudit
	g.Expect(suite.k8s.Patch(t.Context(), tp, patch)).To(Succeed())

	forged := []string{"X-Keygate-Decision", "allow", "X-Keygate-Key-Id", creds.key, "X-Keygate-Permissions", "charges:List"}
	g.Eventually(func() int { return sc.do(http.MethodGet, "/charges", "", forged...).status }, propagationTimeout, interval).
		Should(Equal(http.StatusOK), "Audit reaches the sidecar: an unauthenticated request is forwarded")
	r = sc.do(http.MethodGet, "/charges", "", forged...)
	g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Decision", "deny; reason=unauthenticated"))
	g.Expect(r.body).NotTo(HaveKey("X-Keygate-Key-Id"), "a forged identity reached the workload")
	g.Expect(r.body).NotTo(HaveKey("X-Keygate-Permissions"))
	r = sc.do(http.MethodGet, "/charges", "", append(forged[:2:2], "Authorization", creds.authorization)...)
	g.Expect(r.status).To(Equal(http.StatusOK))
	g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Decision", "deny; reason=ratelimited"))
	g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Key-Id", creds.key))
	g.Eventually(func(g Gomega) keygatev1.Enforcement {
		got := &keygatev1.TokenPolicy{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, got)).To(Succeed())
		return got.Status.Enforcement
	}, operatorTimeout, interval).Should(Equal(keygatev1.EnforcementAudit))
}
