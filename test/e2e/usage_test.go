package e2e

import (
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestUsageFromThreeSidecars: three sidecar processes, running as the
// least-privilege sidecar user, serve a key; on SIGTERM each writes its last
// usage minute to the usage ConfigMap (RBAC allows that patch), and the
// operator folds it into status.lastUsedTime — once, however many replicas
// report the same minute.
func TestUsageFromThreeSidecars(t *testing.T) {
	g := NewWithT(t)
	creds := createKey(t, "usage", keygatev1.ApiKeySpec{Permissions: []keygatev1.Permission{"charges:List"}})
	g.Expect(getKey(t, "usage").Status.LastUsedTime).To(BeNil(), "a new key was never used")
	sidecars := []*sidecar{startSidecar(t, "usage-a"), startSidecar(t, "usage-b"), startSidecar(t, "usage-c")}
	start := time.Now().UTC().Truncate(time.Minute)
	for _, s := range sidecars {
		s.waitWorks(creds)
		for i := 0; i < 50; i++ {
			g.Expect(s.status("/charges", creds.authorization)).To(Equal(http.StatusOK))
		}
	}
	for _, s := range sidecars {
		s.proc.stop()
		g.Expect(s.proc.exited()).To(BeTrue())
	}
	end := time.Now().UTC()

	cm := &corev1.ConfigMap{}
	g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: bundle.UsageConfigMapName(policy)}, cm)).To(Succeed())
	reported, err := time.Parse(time.RFC3339, cm.Data[creds.key])
	g.Expect(err).NotTo(HaveOccurred(), "usage ConfigMap entry of %s: %v", creds.key, cm.Data)
	g.Expect(reported).To(BeTemporally(">=", start))
	g.Expect(reported).To(BeTemporally("<=", end))

	g.Eventually(func(g Gomega) {
		key := &keygatev1.ApiKey{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: "usage"}, key)).To(Succeed())
		g.Expect(key.Status.LastUsedTime).NotTo(BeNil())
		// Replicas may straddle a minute: the latest minute any of them wrote wins.
		g.Expect(key.Status.LastUsedTime.Time).To(BeTemporally(">=", reported))
		g.Expect(key.Status.LastUsedTime.Time).To(BeTemporally("<=", end))
	}, operatorTimeout, interval).Should(Succeed())
}
