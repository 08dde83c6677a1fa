package controllers

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// rotationsTotal counts secret rotations by trigger: manual (annotation),
// scheduled (spec.rotation.interval), replaced (Secret deleted or edited) and
// signing (TokenPolicy signing key).
var rotationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "keygate_rotations_total",
	Help: "Secret and signing-key rotations, by trigger.",
}, []string{"trigger"})

func init() {
	metrics.Registry.MustRegister(rotationsTotal)
	for _, t := range []string{"manual", "scheduled", "replaced", "signing"} {
		rotationsTotal.WithLabelValues(t)
	}
}

// apiKeysDesc describes keygate_apikeys.
var apiKeysDesc = prometheus.NewDesc("keygate_apikeys",
	"ApiKeys by the status and reason of a condition.", []string{"condition", "status", "reason"}, nil)

// staleDesc describes keygate_apikeys_stale.
var staleDesc = prometheus.NewDesc("keygate_apikeys_stale",
	"ApiKeys with the condition Stale=True (unused for their policy's staleAfter), by namespace and policy.", []string{"namespace", "policy"}, nil)

// ApiKeyCollector reports keygate_apikeys from the manager's cache at scrape
// time, so the figure is always what the API server holds.
type ApiKeyCollector struct{ Reader client.Reader }

// RegisterMetrics adds keygate_apikeys, read from reader (the manager's cache).
func RegisterMetrics(reader client.Reader) error {
	return metrics.Registry.Register(ApiKeyCollector{Reader: reader})
}

// Describe implements prometheus.Collector.
func (c ApiKeyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- apiKeysDesc; ch <- staleDesc }

// Collect implements prometheus.Collector.
func (c ApiKeyCollector) Collect(ch chan<- prometheus.Metric) {
	list := &keygatev1.ApiKeyList{}
	// Read only: a deep copy of every cached ApiKey at each scrape was some
	// 150 MB of garbage at 100,000 keys.
	if err := c.Reader.List(context.Background(), list, client.UnsafeDisableDeepCopy); err != nil {
		ch <- prometheus.NewInvalidMetric(apiKeysDesc, err)
		ch <- prometheus.NewInvalidMetric(staleDesc, err)
		return
	}
	type policyRef struct{ namespace, name string }
	stale := map[policyRef]int{}
	type labels struct{ status, reason string }
	counts := map[labels]int{}
	for i := range list.Items {
		l := labels{"Unknown", "Pending"}
		if cond := meta.FindStatusCondition(list.Items[i].Status.Conditions, keygatev1.ConditionReady); cond != nil {
			l = labels{string(cond.Status), cond.Reason}
		}
		counts[l]++
		p := policyRef{list.Items[i].Namespace, list.Items[i].Spec.PolicyRef.Name}
		n := stale[p] // every policy with keys reports, 0 included
		if meta.IsStatusConditionTrue(list.Items[i].Status.Conditions, keygatev1.ConditionStale) {
			n++
		}
		stale[p] = n
	}
	for p, n := range stale {
		ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, float64(n), p.namespace, p.name)
	}
	for l, n := range counts {
		ch <- prometheus.MustNewConstMetric(apiKeysDesc, prometheus.GaugeValue, float64(n), keygatev1.ConditionReady, l.status, l.reason)
	}
}
