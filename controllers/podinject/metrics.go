package podinject

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Results of an admission, the "result" label of the metrics.
const (
	resultInjected  = "injected"  // the sidecar was added
	resultUnchanged = "unchanged" // already injected: nothing to do
	resultRefused   = "refused"   // bad annotation, port clash or missing TokenPolicy
	resultError     = "error"     // the webhook could not decide (decode, API errors)
	resultSkipped   = "skipped"   // not a pod creation
)

var (
	injections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keygate_injections_total",
		Help: "Pod admissions by the injection webhook, by result (injected, unchanged, refused, error, skipped).",
	}, []string{"result"})
	admissionDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keygate_admission_duration_seconds",
		Help:    "Time the injection webhook took to answer an admission request, by result.",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	}, []string{"result"})
)

func init() {
	metrics.Registry.MustRegister(injections, admissionDuration)
}

func observeAdmission(result string, d time.Duration) {
	injections.WithLabelValues(result).Inc()
	admissionDuration.WithLabelValues(result).Observe(d.Seconds())
}

// uninjectedTimeout bounds one count of the gauge (a read of the local cache).
const uninjectedTimeout = 2 * time.Second

// uninjectedPods counts, at scrape time from the cache of labelled pods, the
// pods labelled keygate.dev/inject=true that lack keygate.dev/injected
// outside the excluded namespaces: they run without the sidecar, which only
// happens if the webhook was bypassed (created before it was installed, or
// while it was removed).
func uninjectedPods(pods client.Reader, excluded map[string]bool) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keygate_uninjected_pods",
		Help: "Pods labelled keygate.dev/inject=true that run without the keygate sidecar (the webhook was bypassed).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), uninjectedTimeout)
		defer cancel()
		n, err := countUninjected(ctx, pods, excluded)
		if err != nil {
			return -1 // the cache is not ready: no answer is better than a wrong zero
		}
		return float64(n)
	})
}

func countUninjected(ctx context.Context, pods client.Reader, excluded map[string]bool) (int, error) {
	list := &corev1.PodList{}
	if err := pods.List(ctx, list, client.MatchingLabels{keygatev1.LabelInject: "true"}); err != nil {
		return 0, err
	}
	n := 0
	for _, p := range list.Items {
		if excluded[p.Namespace] || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if _, ok := p.Annotations[keygatev1.AnnotationInjected]; !ok {
			n++
		}
	}
	return n, nil
}
