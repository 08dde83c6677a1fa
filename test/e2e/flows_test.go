package e2e

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// unauthorized is the one 401 body of docs/sidecar.md, whatever the cause.
var unauthorized = map[string]any{"error": "unauthorized", "message": "authentication required"}

// TestBasicAuthAndPermissions: the credentials the operator writes work
// through the sidecar; a wrong secret is 401, a missing permission 403.
func TestBasicAuthAndPermissions(t *testing.T) {
	g := NewWithT(t)
	creds := createKey(t, "basic", keygatev1.ApiKeySpec{Permissions: []keygatev1.Permission{"charges:List"}})
	g.Expect(creds.authorization).To(Equal(basic(creds.key, creds.secret)), "authorization is Basic base64(key:secret)")
	sc := startSidecar(t, "sidecar")

	sc.waitWorks(creds)
	r := sc.get("/charges", creds.authorization)
	g.Expect(r.status).To(Equal(http.StatusOK), "GET /charges: %s", r.raw)
	g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Key-Id", creds.key))
	g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Permissions", "charges:List"))
	g.Expect(r.body).To(HaveKeyWithValue("path", "/charges"))
	g.Expect(r.body).NotTo(HaveKey("Authorization"), "the credential is not passed upstream")
	g.Expect(sc.status("/charges/ch_1", creds.authorization)).To(Equal(http.StatusOK), "prefix rule /charges/*")

	// Headers a client forges are replaced.
	r = sc.do(http.MethodGet, "/charges", "", "Authorization", creds.authorization, "X-Keygate-Key-Id", "apk-forged")
	g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Key-Id", creds.key))

	r = sc.get("/charges", basic(creds.key, creds.secret+"x"))
	g.Expect(r.status).To(Equal(http.StatusUnauthorized))
	g.Expect(r.body).To(Equal(unauthorized))
	g.Expect(r.header.Get("WWW-Authenticate")).To(ContainSubstring(`Basic realm="keygate"`))
	g.Expect(r.header.Get("Cache-Control")).To(Equal("no-store"))

	r = sc.do(http.MethodGet, "/charges", "")
	g.Expect(r.status).To(Equal(http.StatusUnauthorized), "no credentials")
	g.Expect(r.body).To(Equal(unauthorized))

	r = sc.get("/refunds", creds.authorization)
	g.Expect(r.status).To(Equal(http.StatusForbidden), "GET /refunds: %s", r.raw)
	g.Expect(r.body).To(Equal(map[string]any{"error": "forbidden", "message": "missing permission refunds:List", "permission": "refunds:List"}))
	g.Expect(r.header.Get("WWW-Authenticate")).To(Equal(`Bearer error="insufficient_scope", scope="refunds:List"`))

	r = sc.get("/payouts", creds.authorization)
	g.Expect(r.status).To(Equal(http.StatusForbidden), "no rule, defaultAction Deny: %s", r.raw)
	g.Expect(r.body).To(HaveKeyWithValue("message", "no rule allows this request"))
}

// TestTokenFlow: a token from the sidecar's token endpoint, for the
// operator's credentials, authenticates as the key.
func TestTokenFlow(t *testing.T) {
	g := NewWithT(t)
	creds := createKey(t, "token", keygatev1.ApiKeySpec{Permissions: []keygatev1.Permission{"charges:List"}})
	sc := startSidecar(t, "sidecar")
	sc.waitWorks(creds)

	tok := sc.token(creds)
	r := sc.get("/charges", "Bearer "+tok)
	g.Expect(r.status).To(Equal(http.StatusOK), "bearer: %s", r.raw)
	g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Key-Id", creds.key))
	g.Expect(sc.status("/refunds", "Bearer "+tok)).To(Equal(http.StatusForbidden), "a token carries no more than the key holds")

	r = sc.do(http.MethodPost, "/api/token", `{"apiKey":"`+creds.key+`","secret":"wrong"}`, "Content-Type", "application/json")
	g.Expect(r.status).To(Equal(http.StatusUnauthorized), "wrong secret: %s", r.raw)
	g.Expect(r.body).To(HaveKeyWithValue("error", "invalid_client"))
}

// TestRotation: after a rotation the new secret works through the sidecar
// and, within the grace period, so does the old one; with a grace period of
// 0s the old one stops working.
func TestRotation(t *testing.T) {
	sc := startSidecar(t, "sidecar")

	t.Run("grace period", func(t *testing.T) {
		g := NewWithT(t)
		old := createKey(t, "rotate-grace", keygatev1.ApiKeySpec{
			Permissions: []keygatev1.Permission{"charges:List"},
			Rotation:    &keygatev1.KeyRotation{GracePeriod: &metav1.Duration{Duration: time.Hour}},
		})
		sc.waitWorks(old)

		rotated := rotate(t, "rotate-grace", "now-1", old)
		g.Expect(rotated.authorization).To(Equal(basic(rotated.key, rotated.secret)))
		g.Eventually(func() int { return sc.status("/charges", rotated.authorization) }, propagationTimeout, interval).
			Should(Equal(http.StatusOK), "the new secret works")
		g.Expect(sc.status("/charges", old.authorization)).To(Equal(http.StatusOK), "the old secret works during the grace period")

		key := getKey(t, "rotate-grace")
		g.Expect(key.Status.SecretVersion).To(BeEquivalentTo(2))
		g.Expect(key.Status.PreviousSecretExpiresAt).NotTo(BeNil())
		g.Expect(key.Status.PreviousSecretExpiresAt.Time).To(BeTemporally("~", time.Now().Add(time.Hour), time.Minute))

		// Both keep working while the operator settles (no later write drops the
		// previous secret within its grace period).
		g.Consistently(func() []int {
			return []int{sc.status("/charges", old.authorization), sc.status("/charges", rotated.authorization)}
		}, 2*time.Second, 200*time.Millisecond).Should(Equal([]int{http.StatusOK, http.StatusOK}))
	})

	t.Run("no grace period", func(t *testing.T) {
		g := NewWithT(t)
		old := createKey(t, "rotate-now", keygatev1.ApiKeySpec{
			Permissions: []keygatev1.Permission{"charges:List"},
			Rotation:    &keygatev1.KeyRotation{GracePeriod: &metav1.Duration{Duration: 0}},
		})
		sc.waitWorks(old)

		rotated := rotate(t, "rotate-now", "now-1", old)
		g.Eventually(func() int { return sc.status("/charges", old.authorization) }, propagationTimeout, interval).
			Should(Equal(http.StatusUnauthorized), "the old secret is refused once the bundle updates")
		g.Expect(sc.status("/charges", rotated.authorization)).To(Equal(http.StatusOK), "the new secret works")
		g.Expect(getKey(t, "rotate-now").Status.PreviousSecretExpiresAt).To(BeNil())

		// The same value again is not a new request.
		key := getKey(t, "rotate-now")
		patch := client.MergeFrom(key.DeepCopy())
		key.Labels = map[string]string{"touched": "yes"}
		g.Expect(suite.k8s.Patch(t.Context(), key, patch)).To(Succeed())
		g.Consistently(func() string { return readCredentials(t, "rotate-now").secret }, 2*time.Second, 200*time.Millisecond).
			Should(Equal(rotated.secret), "an annotation value already acted on does not rotate again")
	})
}

// TestDisable: a disabled key stops working on a running sidecar, and works
// again when enabled.
func TestDisable(t *testing.T) {
	g := NewWithT(t)
	creds := createKey(t, "disable", keygatev1.ApiKeySpec{Permissions: []keygatev1.Permission{"charges:List"}})
	sc := startSidecar(t, "sidecar")
	sc.waitWorks(creds)
	tok := sc.token(creds)

	setDisabled := func(disabled bool) {
		key := getKey(t, "disable")
		patch := client.MergeFrom(key.DeepCopy())
		key.Spec.Disabled = disabled
		g.Expect(suite.k8s.Patch(t.Context(), key, patch)).To(Succeed())
	}
	setDisabled(true)
	g.Eventually(func() int { return sc.status("/charges", creds.authorization) }, propagationTimeout, interval).
		Should(Equal(http.StatusUnauthorized), "Basic auth of a disabled key")
	r := sc.get("/charges", "Bearer "+tok)
	g.Expect(r.status).To(Equal(http.StatusUnauthorized), "a token of a disabled key")
	g.Expect(r.body).To(Equal(unauthorized))
	waitReady(t, "disable", metav1.ConditionFalse, keygatev1.ReasonDisabled)

	setDisabled(false)
	waitReady(t, "disable", metav1.ConditionTrue, keygatev1.ReasonReady)
	g.Eventually(func() int { return sc.status("/charges", creds.authorization) }, propagationTimeout, interval).
		Should(Equal(http.StatusOK), "enabled again, the same credentials work")
}

// TestRevocationAcrossSidecars: a token revoked on one sidecar is refused by
// another sidecar of the same policy (through the operator's ConfigMap).
func TestRevocationAcrossSidecars(t *testing.T) {
	g := NewWithT(t)
	creds := createKey(t, "revoke", keygatev1.ApiKeySpec{Permissions: []keygatev1.Permission{"charges:List"}})
	a := startSidecar(t, "sidecar-a")
	b := startSidecar(t, "sidecar-b")
	a.waitWorks(creds)
	b.waitWorks(creds)

	// RFC 7009 on A.
	tok := a.token(creds)
	g.Expect(b.status("/charges", "Bearer "+tok)).To(Equal(http.StatusOK), "a token from A works on B (shared signing keys)")
	r := a.do(http.MethodPost, "/oauth/revoke", url.Values{"token": {tok}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded", "Authorization", creds.authorization)
	g.Expect(r.status).To(Equal(http.StatusOK), "revoke: %s", r.raw)
	g.Expect(a.status("/charges", "Bearer "+tok)).To(Equal(http.StatusUnauthorized), "A refuses at once")
	g.Eventually(func() int { return b.status("/charges", "Bearer "+tok) }, propagationTimeout, interval).
		Should(Equal(http.StatusUnauthorized), "B refuses a token revoked on A")

	// {"action":"revoke"} with the token itself, on B; A follows.
	tok2 := b.token(creds)
	g.Expect(a.status("/charges", "Bearer "+tok2)).To(Equal(http.StatusOK))
	r = b.do(http.MethodPost, "/api/token", `{"action":"revoke"}`, "Content-Type", "application/json", "Authorization", "Bearer "+tok2)
	g.Expect(r.status).To(Equal(http.StatusCreated), "self-revoke: %s", r.raw)
	g.Expect(r.body).To(HaveKeyWithValue("revoked", true))
	g.Eventually(func() int { return a.status("/charges", "Bearer "+tok2) }, propagationTimeout, interval).
		Should(Equal(http.StatusUnauthorized), "A refuses a token revoked on B")

	// The key itself is unaffected, and a restarted sidecar still refuses.
	g.Expect(b.status("/charges", creds.authorization)).To(Equal(http.StatusOK))
	c := startSidecar(t, "sidecar-c")
	g.Expect(c.status("/charges", "Bearer "+tok)).To(Equal(http.StatusUnauthorized), "a new sidecar loads the revocations before it is ready")
	g.Expect(c.status("/charges", "Bearer "+tok2)).To(Equal(http.StatusUnauthorized))
}

// TestRevocationOutlivesLeeway: the operator prunes a revocation after its
// token has expired, but the sidecar accepts a token up to bundle.TokenLeeway
// after its exp (clock skew); a revoked token must stay refused through that
// window, on a running sidecar and on one started within it, and the entry
// must still be pruned afterwards.
func TestRevocationOutlivesLeeway(t *testing.T) {
	g := NewWithT(t)
	const name = "short"
	g.Expect(createPolicy(t.Context(), name, keygatev1.TokenPolicySpec{
		TokenTTL:      &metav1.Duration{Duration: 2 * time.Second},
		DefaultAction: keygatev1.ActionAuthenticated,
	})).To(Succeed())
	creds := createKey(t, "short-key", keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: name}})
	a := startSidecarFor(t, "sidecar-short-a", name)
	a.waitWorks(creds)
	tok := a.token(creds)
	claims, err := jwtClaims(tok)
	g.Expect(err).NotTo(HaveOccurred())
	jti, _ := claims["jti"].(string)
	expSeconds, _ := claims["exp"].(float64)
	exp := time.Unix(int64(expSeconds), 0)
	r := a.do(http.MethodPost, "/oauth/revoke", url.Values{"token": {tok}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded", "Authorization", creds.authorization)
	g.Expect(r.status).To(Equal(http.StatusOK), "revoke: %s", r.raw)
	g.Expect(a.status("/charges", "Bearer "+tok)).To(Equal(http.StatusUnauthorized))

	revocations := func(g Gomega) map[string]string {
		cm := &corev1.ConfigMap{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: bundle.RevocationsConfigMapName(name)}, cm)).To(Succeed())
		return cm.Data
	}
	g.Expect(revocations(g)).To(HaveKey(jti))

	// Past exp, within the leeway: the token would verify, so the revocation
	// must still be in force. (The operator wakes up at its prune time; before
	// the fix it pruned at exp.)
	withinLeeway := exp.Add(2 * time.Second)
	g.Eventually(func() bool { return time.Now().After(withinLeeway) }, operatorTimeout, interval).Should(BeTrue(), "waiting for the token's exp")
	g.Expect(revocations(g)).To(HaveKey(jti), "the revocation outlives exp by the sidecars' leeway")
	g.Expect(a.status("/charges", "Bearer "+tok)).To(Equal(http.StatusUnauthorized), "running sidecar, within the leeway")
	b := startSidecarFor(t, "sidecar-short-b", name)
	g.Expect(b.status("/charges", "Bearer "+tok)).To(Equal(http.StatusUnauthorized), "new sidecar, within the leeway")

	// Then the operator prunes it, and the token is refused as expired.
	g.Eventually(revocations, bundle.TokenLeeway+operatorTimeout, interval).ShouldNot(HaveKey(jti), "pruned after exp + leeway")
	g.Expect(time.Now().After(exp.Add(bundle.TokenLeeway))).To(BeTrue(), "not pruned before exp + leeway")
	g.Expect(a.status("/charges", "Bearer "+tok)).To(Equal(http.StatusUnauthorized))
	g.Expect(b.status("/charges", "Bearer "+tok)).To(Equal(http.StatusUnauthorized))
}
