package controllers

import (
	"net/http"
	"path"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
)

// A leader-elected replica that is not the leader lists and watches all
// that its controllers watch, so that on a failover it takes over with its
// caches synced (docs/operator.md, "Leader failover at 100,000 keys"): the
// controllers ask for their informers only once elected.
func TestStandbyCachesWarm(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	const lease = "keygate-manager.keygate.dev"
	// A leader that renewed the Lease just now, for an hour: the manager
	// below stays a standby throughout.
	now := metav1.NewMicroTime(time.Now())
	create(t, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: lease},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("the-leader"), LeaseDurationSeconds: ptr.To(int32(3600)),
			AcquireTime: &now, RenewTime: &now}})
	// The collections of ns the manager lists or watches.
	reads := &writeLog{note: func(req *http.Request) string {
		if req.Method == http.MethodGet && path.Base(path.Dir(req.URL.Path)) == ns && path.Base(path.Dir(path.Dir(req.URL.Path))) == "namespaces" {
			return path.Base(req.URL.Path)
		}
		return ""
	}}
	m := startManagerWith(t, ns, clock.RealClock{}, reads.wrap(cfg), func(o *ctrl.Options) {
		o.LeaderElection, o.LeaderElectionID, o.LeaderElectionNamespace = true, lease, ns
	})
	g.Eventually(reads.distinct, timeout, interval).Should(ContainElements("apikeys", "tokenpolicies", "secrets", "configmaps"),
		"the standby lists and watches what its controllers watch")
	g.Expect(m.mgr.GetCache().WaitForCacheSync(t.Context())).To(BeTrue())
	select {
	case <-m.mgr.Elected():
		t.Fatal("the manager was elected while another replica held the Lease")
	default:
	}
}
