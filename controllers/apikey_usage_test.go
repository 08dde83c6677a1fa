package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	sidecarconfig "github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/usage"
)

func TestDecideUsage(t *testing.T) {
	ready := func(k *keygatev1.ApiKey) {
		k.Status.Conditions = []metav1.Condition{{Type: keygatev1.ConditionReady, Status: metav1.ConditionTrue, Reason: keygatev1.ReasonReady}}
	}
	usedAt := func(at time.Time) func(*keygatev1.ApiKey) {
		return func(k *keygatev1.ApiKey) { k.Status.LastUsedTime = &metav1.Time{Time: at} }
	}
	notReady := func(k *keygatev1.ApiKey) {
		k.Status.Conditions = []metav1.Condition{{Type: keygatev1.ConditionReady, Status: metav1.ConditionFalse, Reason: keygatev1.ReasonDisabled}}
	}
	const day = 24 * time.Hour
	minute := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	tests := []struct {
		name       string
		key        keygatev1.ApiKey
		staleAfter time.Duration
		reported   string
		now        time.Time
		lastUsed   time.Time // zero: unset
		stale      string    // "": no condition, else status/reason
		staleAt    time.Time
	}{
		{"never used, young", keyAt("k", t0, ready), 30 * day, "", t0.Add(day), time.Time{}, "False/RecentlyUsed", t0.Add(30 * day)},
		{"never used, old", keyAt("k", t0, ready), 30 * day, "", t0.Add(30 * day), time.Time{}, "True/Unused", time.Time{}},
		{"report folds in", keyAt("k", t0, ready), 30 * day, minute(t0.Add(40 * day)), t0.Add(41 * day), t0.Add(40 * day), "False/RecentlyUsed", t0.Add(70 * day)},
		{"older report ignored", keyAt("k", t0, ready, usedAt(t0.Add(10*day))), 30 * day, minute(t0.Add(5 * day)), t0.Add(11 * day), t0.Add(10 * day), "False/RecentlyUsed", t0.Add(40 * day)},
		{"used, then idle for staleAfter", keyAt("k", t0, ready, usedAt(t0.Add(day))), 30 * day, "", t0.Add(31 * day), t0.Add(day), "True/Unused", time.Time{}},
		{"report from the future ignored", keyAt("k", t0, ready), 30 * day, minute(t0.Add(time.Hour)), t0, time.Time{}, "False/RecentlyUsed", t0.Add(30 * day)},
		{"garbage report ignored", keyAt("k", t0, ready), 30 * day, "yesterday", t0, time.Time{}, "False/RecentlyUsed", t0.Add(30 * day)},
		{"no staleAfter: no condition, usage still folded", keyAt("k", t0, ready), 0, minute(t0), t0.Add(time.Minute), t0, "", time.Time{}},
		{"not Ready: no condition", keyAt("k", t0, notReady), 30 * day, "", t0.Add(90 * day), time.Time{}, "", time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := decideUsage(&tc.key, tc.staleAfter, tc.reported, tc.now)
			switch {
			case tc.lastUsed.IsZero() && v.LastUsed != nil:
				t.Errorf("lastUsed = %v, want unset", v.LastUsed)
			case !tc.lastUsed.IsZero() && (v.LastUsed == nil || !v.LastUsed.Time.Equal(tc.lastUsed)):
				t.Errorf("lastUsed = %v, want %v", v.LastUsed, tc.lastUsed)
			}
			got := ""
			if v.Stale != nil {
				got = string(v.Stale.Status) + "/" + v.Stale.Reason
			}
			if got != tc.stale {
				t.Errorf("Stale = %q, want %q", got, tc.stale)
			}
			if !v.StaleAt.Equal(tc.staleAt) {
				t.Errorf("staleAt = %v, want %v", v.StaleAt, tc.staleAt)
			}
		})
	}
}

// TestUsageFoldedAndStale: the operator creates the usage ConfigMap, folds a
// sidecar's report into status.lastUsedTime, sets Stale once staleAfter
// passes without use (with an Event), and clears it on the next report.
func TestUsageFoldedAndStale(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clk)
	policy := newPolicy(ns, "p", func(p *keygatev1.TokenPolicy) { p.Spec.StaleAfter = &metav1.Duration{Duration: 24 * time.Hour} })
	key := newApiKey(ns, "k", "p")
	create(t, policy, key)
	waitReason(t, ns, "k", "True/Ready")
	keyID := getApiKey(g, ns, "k").Status.KeyID
	cm := &corev1.ConfigMap{}
	g.Eventually(func() error {
		return k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: bundle.UsageConfigMapName("p")}, cm)
	}, timeout, interval).Should(Succeed())
	g.Expect(cm.OwnerReferences).To(HaveLen(1))
	g.Eventually(func(g Gomega) string { return staleOf(g, ns, "k") }, timeout, interval).Should(Equal("False/RecentlyUsed"))

	// A sidecar reports a use (as its merge patch would).
	used := clk.Now().UTC().Truncate(time.Minute)
	report(t, cm, keyID, used)
	g.Eventually(func(g Gomega) *metav1.Time { return getApiKey(g, ns, "k").Status.LastUsedTime }, timeout, interval).
		Should(WithTransform(func(t *metav1.Time) bool { return t != nil && t.Time.Equal(used) }, BeTrue()))

	// A day without use: Stale, with an Event.
	clk.Step(25 * time.Hour)
	poke(t, key)
	g.Eventually(func(g Gomega) string { return staleOf(g, ns, "k") }, timeout, interval).Should(Equal("True/Unused"))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "k") }, timeout, interval).Should(ContainElement(keygatev1.ReasonUnused))
	g.Expect(getApiKey(g, ns, "k").Status.Conditions).To(ContainElement(HaveField("Type", keygatev1.ConditionReady)), "Ready stays")
	g.Expect(staleGauge(g, ns, "p")).To(Equal(1.0), "keygate_apikeys_stale")

	// Used again: no longer stale.
	report(t, cm, keyID, clk.Now().UTC().Truncate(time.Minute))
	g.Eventually(func(g Gomega) string { return staleOf(g, ns, "k") }, timeout, interval).Should(Equal("False/RecentlyUsed"))
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "k") }, timeout, interval).Should(ContainElement(keygatev1.ReasonRecentlyUsed))
	g.Expect(staleGauge(g, ns, "p")).To(Equal(0.0), "keygate_apikeys_stale once used again")
}

// staleGauge is keygate_apikeys_stale{namespace=ns,policy=policy} as the
// collector reports it (-1 when absent).
func staleGauge(g Gomega, ns, policy string) float64 {
	reg := prometheus.NewRegistry()
	g.Expect(reg.Register(ApiKeyCollector{Reader: k8sClient})).To(Succeed())
	families, err := reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != "keygate_apikeys_stale" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["namespace"] == ns && labels["policy"] == policy {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

func report(t *testing.T, cm *corev1.ConfigMap, keyID string, at time.Time) {
	t.Helper()
	patch := []byte(`{"data":{"` + keyID + `":"` + at.Format(time.RFC3339) + `"}}`)
	if err := k8sClient.Patch(context.Background(), cm, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatalf("report usage: %v", err)
	}
}

// staleOf is the Stale condition's status/reason, "" when absent.
func staleOf(g Gomega, ns, name string) string {
	c := meta.FindStatusCondition(getApiKey(g, ns, name).Status.Conditions, keygatev1.ConditionStale)
	if c == nil {
		return ""
	}
	return string(c.Status) + "/" + c.Reason
}

// TestUsageStatusWritesAreBounded: three sidecar replicas each record a key
// hundreds of times a minute and publish every minute through the real
// ConfigMap sink; the operator writes the key's status at most once per
// minute, and lastUsedTime follows the latest minute.
func TestUsageStatusWritesAreBounded(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	clk := clocktesting.NewFakeClock(time.Now().UTC().Truncate(time.Minute).Add(time.Second))
	startManager(t, ns, clk)
	create(t, newPolicy(ns, "p", func(p *keygatev1.TokenPolicy) { p.Spec.StaleAfter = &metav1.Duration{Duration: time.Hour} }),
		newApiKey(ns, "k", "p"))
	g.Eventually(func(g Gomega) string { return staleOf(g, ns, "k") }, timeout, interval).Should(Equal("False/RecentlyUsed"))
	g.Eventually(func() error {
		return k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: bundle.UsageConfigMapName("p")}, &corev1.ConfigMap{})
	}, timeout, interval).Should(Succeed())
	key := getApiKey(g, ns, "k")

	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: k8sClient.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	w, err := wc.Watch(context.Background(), &keygatev1.ApiKeyList{}, client.InNamespace(ns),
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: key.ResourceVersion}})
	g.Expect(err).NotTo(HaveOccurred())
	defer w.Stop()

	rc, err := sidecarconfig.NewCoreClient(cfg)
	g.Expect(err).NotTo(HaveOccurred())
	var replicas []*usage.Publisher
	for i := 0; i < 3; i++ {
		replicas = append(replicas, &usage.Publisher{Recorder: usage.NewRecorder(),
			Sink: &usage.ConfigMap{Client: rc, Namespace: ns, Name: bundle.UsageConfigMapName("p")}})
	}
	const minutes = 4
	var last time.Time
	for m := 0; m < minutes; m++ {
		for sec := 0; sec < 60; sec += 10 {
			for _, p := range replicas {
				for i := 0; i < 50; i++ {
					p.Recorder.Seen(key.Status.KeyID, clk.Now())
				}
			}
			clk.Step(10 * time.Second)
		}
		// Each replica's minute tick.
		for _, p := range replicas {
			g.Expect(p.PublishOnce(context.Background())).To(BeTrue())
		}
		last = clk.Now().Add(-10 * time.Second).Truncate(time.Minute) // the minute of the last Seen
		g.Eventually(func(g Gomega) time.Time {
			lu := getApiKey(g, ns, "k").Status.LastUsedTime
			g.Expect(lu).NotTo(BeNil())
			return lu.Time.UTC()
		}, timeout, interval).Should(Equal(last))
	}
	final := getApiKey(g, ns, "k").ResourceVersion
	writes := 0
	for done := false; !done; {
		select {
		case ev := <-w.ResultChan():
			if k, ok := ev.Object.(*keygatev1.ApiKey); ok && k.Name == "k" {
				writes++
				done = k.ResourceVersion == final
			}
		case <-time.After(timeout):
			t.Fatalf("watch did not deliver resourceVersion %s (%d writes seen)", final, writes)
		}
	}
	if writes > minutes {
		t.Fatalf("%d status writes for %d minutes of use from 3 replicas, want at most one per minute", writes, minutes)
	}
	t.Logf("%d ApiKey writes for %d minutes × 3 replicas × 300 requests", writes, minutes)
}

// A sidecar's usage report re-queues only the ApiKeys whose reported minute
// it added or changed (found by key ID through the cache's index), not every
// key of the policy: at 100,000 keys and a report a minute per sidecar, the
// latter was 100,000 reconciles a minute per replica.
func TestUsageReportQueuesOnlyChangedKeys(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	for i := range 5 {
		k := newApiKey(ns, fmt.Sprintf("k%d", i), "p")
		create(t, k)
		k.Status.KeyID = fmt.Sprintf("apk-%020d", i)
		g.Expect(k8sClient.Status().Update(context.Background(), k)).To(Succeed())
	}
	c := startCache(t, ns)
	g.Eventually(func(g Gomega) {
		keys, err := apiKeysWithKeyID(context.Background(), c, ns, "apk-00000000000000000004")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(keys).To(HaveLen(1))
		g.Expect(keys[0].Name).To(Equal("k4"))
	}, timeout, interval).Should(Succeed())

	h := usageHandler{r: &ApiKeyReconciler{Client: c}}
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
	defer q.ShutDown()
	usageCM := func(data map[string]string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: bundle.UsageConfigMapName("p"),
			Labels: map[string]string{keygatev1.LabelTokenPolicy: "p"}}, Data: data}
	}
	old := usageCM(map[string]string{"apk-00000000000000000001": "2026-12-01T10:00:00Z", "apk-00000000000000000002": "2026-12-01T10:00:00Z"})
	cur := usageCM(map[string]string{"apk-00000000000000000001": "2026-12-01T10:00:00Z", "apk-00000000000000000002": "2026-12-01T10:01:00Z",
		"apk-00000000000000000003": "2026-12-01T10:01:00Z"})
	drain := func() []string {
		var queued []string
		for q.Len() > 0 {
			req, _ := q.Get()
			queued = append(queued, req.Name)
			q.Done(req)
		}
		return queued
	}
	h.Update(context.Background(), event.TypedUpdateEvent[client.Object]{ObjectOld: old, ObjectNew: cur}, q)
	g.Expect(drain()).To(ConsistOf("k2", "k3"), "the changed and the new entry; not k1 (unchanged), k0 and k4 (not reported)")

	// A key ID no ApiKey carries yet (its status not seen yet) queues the
	// policy's keys once, so the report is not lost.
	next := usageCM(map[string]string{"apk-00000000000000000001": "2026-12-01T10:00:00Z", "apk-not-yet": "2026-12-01T10:02:00Z"})
	h.Update(context.Background(), event.TypedUpdateEvent[client.Object]{ObjectOld: cur, ObjectNew: next}, q)
	g.Expect(drain()).To(ConsistOf("k0", "k1", "k2", "k3", "k4"))
}

// The collector reads the manager's cache a bucket at a time (eachApiKey,
// across namespaces) and counts every ApiKey once.
func TestApiKeyCollectorReadsTheCache(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	for i := range 70 { // more keys than buckets
		create(t, newApiKey(ns, fmt.Sprintf("k%02d", i), fmt.Sprintf("p%d", i%2)))
	}
	mgr := startIndexedManager(t, ns)
	reg := prometheus.NewRegistry()
	g.Expect(reg.Register(ApiKeyCollector{Reader: mgr.GetCache()})).To(Succeed())
	g.Eventually(func(g Gomega) map[string]float64 {
		families, err := reg.Gather()
		g.Expect(err).NotTo(HaveOccurred())
		got := map[string]float64{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				name := f.GetName()
				for _, l := range m.GetLabel() {
					name += "," + l.GetName() + "=" + l.GetValue()
				}
				got[name] = m.GetGauge().GetValue()
			}
		}
		return got
	}, timeout, interval).Should(Equal(map[string]float64{
		"keygate_apikeys,condition=Ready,reason=Pending,status=Unknown": 70,
		"keygate_apikeys_stale,namespace=" + ns + ",policy=p0":          0,
		"keygate_apikeys_stale,namespace=" + ns + ",policy=p1":          0,
	}))
}
