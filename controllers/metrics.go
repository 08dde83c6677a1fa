package controllers

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/cache"
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
	type policyRef struct{ namespace, name string }
	stale := map[policyRef]int{}
	type labels struct{ status, reason string }
	counts := map[labels]int{}
	// Read only, and from the manager's cache a bucket at a time: a copy of
	// every cached ApiKey at each scrape was some 150 MB of garbage at
	// 100,000 keys.
	each := eachApiKey
	if _, isCache := c.Reader.(cache.Cache); !isCache {
		each = listApiKeys // the bucket index is the cache's
	}
	err := each(context.Background(), c.Reader, func(k *keygatev1.ApiKey) error {
		l := labels{"Unknown", "Pending"}
		if cond := meta.FindStatusCondition(k.Status.Conditions, keygatev1.ConditionReady); cond != nil {
			l = labels{string(cond.Status), cond.Reason}
		}
		counts[l]++
		p := policyRef{k.Namespace, k.Spec.PolicyRef.Name}
		n := stale[p] // every policy with keys reports, 0 included
		if meta.IsStatusConditionTrue(k.Status.Conditions, keygatev1.ConditionStale) {
			n++
		}
		stale[p] = n
		return nil
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(apiKeysDesc, err)
		ch <- prometheus.NewInvalidMetric(staleDesc, err)
		return
	}
	for p, n := range stale {
		ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, float64(n), p.namespace, p.name)
	}
	for l, n := range counts {
		ch <- prometheus.MustNewConstMetric(apiKeysDesc, prometheus.GaugeValue, float64(n), keygatev1.ConditionReady, l.status, l.reason)
	}
}

// listApiKeys calls f with every ApiKey reader lists, read only.
func listApiKeys(ctx context.Context, reader client.Reader, f func(*keygatev1.ApiKey) error) error {
	list := &keygatev1.ApiKeyList{}
	if err := reader.List(ctx, list, client.UnsafeDisableDeepCopy); err != nil {
		return fmt.Errorf("list ApiKeys: %w", err)
	}
	for i := range list.Items {
		if err := f(&list.Items[i]); err != nil {
			return err
		}
	}
	return nil
}
