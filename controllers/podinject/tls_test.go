package podinject

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

func TestInjectTLSSecret(t *testing.T) {
	pod := newPod(withAnnotation(keygatev1.AnnotationTLSSecret, "web-tls"))
	changed, err := inject(pod, testConfig())
	if err != nil || !changed {
		t.Fatalf("inject = %v, %v", changed, err)
	}
	want := wantSidecar("8080", "8443", testConfig().Resources)
	want.Args = append(want.Args, "--tls-cert-file=/var/run/keygate/tls/tls.crt", "--tls-key-file=/var/run/keygate/tls/tls.key")
	want.VolumeMounts = []corev1.VolumeMount{{Name: "keygate-tls", MountPath: "/var/run/keygate/tls", ReadOnly: true}}
	if !equality.Semantic.DeepEqual(pod.Spec.InitContainers, []corev1.Container{want}) {
		t.Fatalf("init containers:\n got %#v\nwant %#v", pod.Spec.InitContainers, want)
	}
	mode := int32(0o444)
	wantVol := corev1.Volume{Name: "keygate-tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName: "web-tls", DefaultMode: &mode,
		Items: []corev1.KeyToPath{{Key: "tls.crt", Path: "tls.crt"}, {Key: "tls.key", Path: "tls.key"}}}}}
	if !equality.Semantic.DeepEqual(pod.Spec.Volumes, []corev1.Volume{wantVol}) {
		t.Fatalf("volumes:\n got %#v\nwant %#v", pod.Spec.Volumes, wantVol)
	}
	for _, c := range pod.Spec.Containers {
		if len(c.VolumeMounts) != 0 {
			t.Fatalf("container %s got mounts %v: only the sidecar reads the key", c.Name, c.VolumeMounts)
		}
	}

	// Re-admission as stored (the token mount added after keygate's): no change.
	mountToken(pod)
	stored := pod.DeepCopy()
	if changed, err := inject(pod, testConfig()); err != nil || changed || !equality.Semantic.DeepEqual(stored, pod) {
		t.Fatalf("re-admission: changed=%v err=%v", changed, err)
	}

	// Another Secret: the volume follows, the mounts stay once each.
	pod.Annotations[keygatev1.AnnotationTLSSecret] = "web-tls-2"
	if changed, err := inject(pod, testConfig()); err != nil || !changed {
		t.Fatalf("new Secret: changed=%v err=%v", changed, err)
	}
	if len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].Secret.SecretName != "web-tls-2" {
		t.Fatalf("volumes after a new Secret: %#v", pod.Spec.Volumes)
	}
	if got := pod.Spec.InitContainers[0].VolumeMounts; len(got) != 2 || got[0].Name != "keygate-tls" || got[1].Name != tokenMount.Name {
		t.Fatalf("mounts after a new Secret: %v", got)
	}

	// Annotation removed: back to plain HTTP, keygate's volume and mount gone, the token mount kept.
	delete(pod.Annotations, keygatev1.AnnotationTLSSecret)
	if changed, err := inject(pod, testConfig()); err != nil || !changed {
		t.Fatalf("annotation removed: changed=%v err=%v", changed, err)
	}
	if len(pod.Spec.Volumes) != 0 {
		t.Fatalf("volumes after removing the annotation: %#v", pod.Spec.Volumes)
	}
	sc := pod.Spec.InitContainers[0]
	if !equality.Semantic.DeepEqual(sc.VolumeMounts, []corev1.VolumeMount{tokenMount}) || len(sc.Args) != 4 {
		t.Fatalf("sidecar after removing the annotation: args %v mounts %v", sc.Args, sc.VolumeMounts)
	}
}

func TestInjectUpstreamH2C(t *testing.T) {
	pod := newPod(withAnnotation(keygatev1.AnnotationUpstreamProtocol, "h2c"))
	if changed, err := inject(pod, testConfig()); err != nil || !changed {
		t.Fatalf("inject = %v, %v", changed, err)
	}
	want := wantSidecar("8080", "8443", testConfig().Resources)
	want.Args = append(want.Args, "--upstream-protocol=h2c")
	if !equality.Semantic.DeepEqual(pod.Spec.InitContainers, []corev1.Container{want}) {
		t.Fatalf("init containers:\n got %#v\nwant %#v", pod.Spec.InitContainers, want)
	}
	if changed, err := inject(pod, testConfig()); err != nil || changed {
		t.Fatalf("re-admission: %v, %v", changed, err)
	}
}

// Through the real API server: the Secret volume and mount as stored (with the
// API server's defaults), and the stored pod re-admitted unchanged.
func TestWebhookMountsTLSSecret(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	first := podIn(ns, "tls", withAnnotation(keygatev1.AnnotationTLSSecret, "web-tls"))
	g.Expect(k8sClient.Create(ctx, first)).To(Succeed())
	stored := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(first), stored)).To(Succeed())
	g.Expect(stored.Spec.Volumes).To(ContainElement(tlsVolume("web-tls")))
	sc := stored.Spec.InitContainers[0]
	in := injection{tlsSecret: "web-tls"}
	g.Expect(sc.VolumeMounts).To(ContainElements(tlsMounts(in)))
	g.Expect(sc.Args).To(ContainElements(tlsArgs(in)))

	again := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: "tls-again", Namespace: ns, Labels: stored.Labels, Annotations: stored.Annotations,
	}, Spec: *stored.Spec.DeepCopy()}
	g.Expect(k8sClient.Create(ctx, again)).To(Succeed())
	got := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(again), got)).To(Succeed())
	g.Expect(equality.Semantic.DeepEqual(got.Spec, stored.Spec)).To(BeTrue(), "spec changed:\n%#v\n%#v", got.Spec, stored.Spec)
	g.Expect(admissions.results(ns, "tls-again")).To(Equal([]string{resultUnchanged}))
}

func TestInjectClientCA(t *testing.T) {
	pod := newPod(withAnnotation(keygatev1.AnnotationTLSSecret, "web-tls"), withAnnotation(keygatev1.AnnotationTLSClientCA, "clients-ca"))
	if changed, err := inject(pod, testConfig()); err != nil || !changed {
		t.Fatalf("inject = %v, %v", changed, err)
	}
	want := wantSidecar("8080", "8443", testConfig().Resources)
	want.Args = append(want.Args, "--tls-cert-file=/var/run/keygate/tls/tls.crt", "--tls-key-file=/var/run/keygate/tls/tls.key",
		"--tls-client-ca-file=/var/run/keygate/client-ca/ca.crt")
	want.VolumeMounts = []corev1.VolumeMount{{Name: "keygate-tls", MountPath: "/var/run/keygate/tls", ReadOnly: true},
		{Name: "keygate-client-ca", MountPath: "/var/run/keygate/client-ca", ReadOnly: true}}
	if !equality.Semantic.DeepEqual(pod.Spec.InitContainers, []corev1.Container{want}) {
		t.Fatalf("init containers:\n got %#v\nwant %#v", pod.Spec.InitContainers, want)
	}
	mode := int32(0o444)
	wantCA := corev1.Volume{Name: "keygate-client-ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "clients-ca"}, DefaultMode: &mode,
		Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}}}
	if len(pod.Spec.Volumes) != 2 || pod.Spec.Volumes[0].Name != "keygate-tls" || !equality.Semantic.DeepEqual(pod.Spec.Volumes[1], wantCA) {
		t.Fatalf("volumes:\n got %#v\nwant keygate-tls and %#v", pod.Spec.Volumes, wantCA)
	}

	// Re-admission as stored: no change.
	mountToken(pod)
	stored := pod.DeepCopy()
	if changed, err := inject(pod, testConfig()); err != nil || changed || !equality.Semantic.DeepEqual(stored, pod) {
		t.Fatalf("re-admission: changed=%v err=%v", changed, err)
	}

	// Client CA annotation removed: its volume, mount and flag go, TLS stays.
	delete(pod.Annotations, keygatev1.AnnotationTLSClientCA)
	if changed, err := inject(pod, testConfig()); err != nil || !changed {
		t.Fatalf("annotation removed: changed=%v err=%v", changed, err)
	}
	if len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].Name != "keygate-tls" {
		t.Fatalf("volumes after removing the client CA: %#v", pod.Spec.Volumes)
	}
	sc := pod.Spec.InitContainers[0]
	if len(sc.VolumeMounts) != 2 || sc.VolumeMounts[0].Name != "keygate-tls" || sc.VolumeMounts[1].Name != tokenMount.Name || len(sc.Args) != 6 {
		t.Fatalf("sidecar after removing the client CA: args %v mounts %v", sc.Args, sc.VolumeMounts)
	}
}

func TestInjectH2CListener(t *testing.T) {
	for v, flag := range map[string]bool{"true": true, "false": false} {
		pod := newPod(withAnnotation(keygatev1.AnnotationH2C, v))
		if changed, err := inject(pod, testConfig()); err != nil || !changed {
			t.Fatalf("%s: inject = %v, %v", v, changed, err)
		}
		want := wantSidecar("8080", "8443", testConfig().Resources)
		if flag {
			want.Args = append(want.Args, "--h2c")
		}
		if !equality.Semantic.DeepEqual(pod.Spec.InitContainers, []corev1.Container{want}) {
			t.Fatalf("%s: init containers:\n got %#v\nwant %#v", v, pod.Spec.InitContainers, want)
		}
		if changed, err := inject(pod, testConfig()); err != nil || changed {
			t.Fatalf("%s: re-admission: %v, %v", v, changed, err)
		}
	}
}

// Through the real API server: the client CA ConfigMap volume as stored, the
// stored pod re-admitted unchanged, and a client CA without TLS refused with
// a message naming the annotation.
func TestWebhookMountsClientCA(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(ctx)
	first := podIn(ns, "mtls", withAnnotation(keygatev1.AnnotationTLSSecret, "web-tls"), withAnnotation(keygatev1.AnnotationTLSClientCA, "clients-ca"))
	g.Expect(k8sClient.Create(ctx, first)).To(Succeed())
	stored := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(first), stored)).To(Succeed())
	g.Expect(stored.Spec.Volumes).To(ContainElements(tlsVolume("web-tls"), clientCAVolume("clients-ca")))
	in := injection{tlsSecret: "web-tls", clientCA: "clients-ca"}
	sc := stored.Spec.InitContainers[0]
	g.Expect(sc.VolumeMounts).To(ContainElements(tlsMounts(in)))
	g.Expect(sc.Args).To(ContainElements(tlsArgs(in)))

	again := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: "mtls-again", Namespace: ns, Labels: stored.Labels, Annotations: stored.Annotations,
	}, Spec: *stored.Spec.DeepCopy()}
	g.Expect(k8sClient.Create(ctx, again)).To(Succeed())
	got := &corev1.Pod{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(again), got)).To(Succeed())
	g.Expect(equality.Semantic.DeepEqual(got.Spec, stored.Spec)).To(BeTrue(), "spec changed:\n%#v\n%#v", got.Spec, stored.Spec)

	err := k8sClient.Create(ctx, podIn(ns, "ca-no-tls", withAnnotation(keygatev1.AnnotationTLSClientCA, "clients-ca")))
	g.Expect(err).To(MatchError(ContainSubstring("annotation keygate.dev/tls-client-ca needs keygate.dev/tls-secret")))
	err = k8sClient.Create(ctx, podIn(ns, "h2c-bad", withAnnotation(keygatev1.AnnotationH2C, "on")))
	g.Expect(err).To(MatchError(ContainSubstring(`annotation keygate.dev/h2c: "on" is neither "true" nor "false"`)))
}
