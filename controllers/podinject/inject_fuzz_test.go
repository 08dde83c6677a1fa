package podinject

import (
	"errors"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// FuzzInject feeds arbitrary annotation values to inject: it never panics, a
// refused pod is left as it was, and an injected pod stays as it is when
// injected again.
func FuzzInject(f *testing.F) {
	f.Add("payments-api", "8080", "", "")
	f.Add("payments-api", "http", "9443", "100m")
	f.Add("", "0", "9901", "-1")
	f.Add("Pay_ments", "65536", "http", "1Gi")
	f.Add("p", "8443", "8443", "")
	f.Fuzz(func(t *testing.T, policy, upstream, port, cpu string) {
		pod := newPod(
			withAnnotation(keygatev1.AnnotationPolicy, policy),
			withAnnotation(keygatev1.AnnotationUpstreamPort, upstream),
		)
		if port != "" {
			pod.Annotations[keygatev1.AnnotationPort] = port
		}
		if cpu != "" {
			pod.Annotations[AnnotationCPULimit] = cpu
		}
		before := pod.DeepCopy()
		changed, err := inject(pod, testConfig())
		if err != nil {
			if !errors.Is(err, ErrInvalidPod) {
				t.Fatalf("error %v does not wrap ErrInvalidPod", err)
			}
			if changed || !equality.Semantic.DeepEqual(before, pod) {
				t.Fatal("a refused pod was changed")
			}
			return
		}
		if !changed || pod.Spec.InitContainers[0].Name != ContainerName {
			t.Fatal("an accepted pod was not injected")
		}
		once := pod.DeepCopy()
		if changed, err := inject(pod, testConfig()); err != nil || changed || !equality.Semantic.DeepEqual(once, pod) {
			t.Fatalf("second inject = %v, %v; pod changed: %v", changed, err, !equality.Semantic.DeepEqual(once, pod))
		}
	})
}
