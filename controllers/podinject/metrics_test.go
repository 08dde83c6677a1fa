package podinject

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// metric returns the families of name in the controller-runtime registry.
func metric(t *testing.T, name string) *dto.MetricFamily {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

func uninjectedGauge(t *testing.T) float64 {
	f := metric(t, "keygate_uninjected_pods")
	if f == nil || len(f.Metric) != 1 {
		t.Fatalf("keygate_uninjected_pods missing: %v", f)
	}
	return f.Metric[0].GetGauge().GetValue()
}

// TestUninjectedPodsGauge labels a pod after its creation (the one way past an
// objectSelector on CREATE): the gauge counts it until it goes.
func TestUninjectedPodsGauge(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	g.Expect(k8sClient.Create(ctx, podIn(ns, "injected"))).To(Succeed())
	g.Expect(k8sClient.Create(ctx, podIn(operatorNamespace, "excluded-"+ns))).To(Succeed())
	g.Eventually(func() float64 { return uninjectedGauge(t) }).WithTimeout(timeout).WithPolling(interval).Should(BeZero())

	sneaky := podIn(ns, "sneaky", func(p *corev1.Pod) { p.Labels = nil })
	g.Expect(k8sClient.Create(ctx, sneaky)).To(Succeed())
	patch := client.MergeFrom(sneaky.DeepCopy())
	sneaky.Labels = map[string]string{keygatev1.LabelInject: "true"}
	g.Expect(k8sClient.Patch(ctx, sneaky, patch)).To(Succeed())
	g.Eventually(func() float64 { return uninjectedGauge(t) }).WithTimeout(timeout).WithPolling(interval).Should(Equal(1.0))

	g.Expect(k8sClient.Delete(ctx, sneaky, client.GracePeriodSeconds(0))).To(Succeed())
	g.Eventually(func() float64 { return uninjectedGauge(t) }).WithTimeout(timeout).WithPolling(interval).Should(BeZero())
	g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "injected"}, &corev1.Pod{})).To(Succeed())
}

func TestAdmissionMetrics(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	count := func(result string) float64 {
		f := metric(t, "keygate_injections_total")
		if f == nil {
			return 0
		}
		for _, m := range f.Metric {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
		return 0
	}
	injected, refused := count(resultInjected), count(resultRefused)
	g.Expect(k8sClient.Create(ctx, podIn(ns, "ok"))).To(Succeed())
	g.Expect(k8sClient.Create(ctx, podIn(ns, "bad", withoutAnnotation(keygatev1.AnnotationPolicy)))).NotTo(Succeed())
	g.Expect(count(resultInjected)).To(Equal(injected + 1))
	g.Expect(count(resultRefused)).To(Equal(refused + 1))

	h := metric(t, "keygate_admission_duration_seconds")
	g.Expect(h).NotTo(BeNil())
	var samples uint64
	for _, m := range h.Metric {
		samples += m.GetHistogram().GetSampleCount()
	}
	g.Expect(samples).To(BeNumerically(">=", 2))
}
