package podinject

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

func testConfig() Config {
	return Config{
		Image:   "keygate/sidecar:v0.1.0",
		Version: "v0.1.0",
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("50m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceMemory: resource.MustParse("128Mi"),
			},
		},
	}
}

type podOption func(*corev1.Pod)

// newPod is an opted-in pod with an "app" container serving "http" on 8080.
func newPod(opts ...podOption) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "web",
			Namespace: "shop",
			Labels:    map[string]string{keygatev1.LabelInject: "true"},
			Annotations: map[string]string{
				keygatev1.AnnotationPolicy:       "payments-api",
				keygatev1.AnnotationUpstreamPort: "8080",
			},
		},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "example/app:1.0",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")},
				}},
			}},
		},
	}
	for _, o := range opts {
		o(pod)
	}
	return pod
}

func withAnnotation(k, v string) podOption {
	return func(p *corev1.Pod) { p.Annotations[k] = v }
}

func withoutAnnotation(k string) podOption {
	return func(p *corev1.Pod) { delete(p.Annotations, k) }
}

func withContainerPort(name string, port int32) podOption {
	return func(p *corev1.Pod) {
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: name, ContainerPort: port})
	}
}

func withInitContainer(name string) podOption {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: name, Image: "busybox:1.36"})
	}
}

// wantSidecar is the full expected sidecar container, written out by hand.
func wantSidecar(upstream, port string, res corev1.ResourceRequirements) corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	yes, no := true, false
	uid := int64(65532)
	p, _ := parsePortNumber(port)
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(9901), Scheme: corev1.URISchemeHTTP,
			}},
			TimeoutSeconds: 1, PeriodSeconds: period, SuccessThreshold: 1, FailureThreshold: failures,
		}
	}
	return corev1.Container{
		Name:            "keygate-sidecar",
		Image:           "keygate/sidecar:v0.1.0",
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            []string{"--policy=payments-api", "--upstream-port=" + upstream, "--port=" + port, "--admin-port=9901"},
		Env: []corev1.EnvVar{
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}},
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
		},
		Ports: []corev1.ContainerPort{
			{Name: "keygate", ContainerPort: p, Protocol: corev1.ProtocolTCP},
			{Name: "keygate-admin", ContainerPort: 9901, Protocol: corev1.ProtocolTCP},
		},
		Resources:      res,
		RestartPolicy:  &always,
		StartupProbe:   probe("/readyz", 1, 120),
		ReadinessProbe: probe("/readyz", 5, 3),
		LivenessProbe:  probe("/healthz", 10, 3),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             &yes,
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			ReadOnlyRootFilesystem:   &yes,
			AllowPrivilegeEscalation: &no,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePath:   "/dev/termination-log",
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

func TestInjectAddsSidecar(t *testing.T) {
	defaults := testConfig().Resources
	overridden := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("100m"),
			corev1.ResourceMemory: resource.MustParse("96Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("1"),
			corev1.ResourceMemory: resource.MustParse("256Mi"),
		},
	}
	tests := []struct {
		name      string
		pod       *corev1.Pod
		wantInits []corev1.Container
	}{
		{
			name:      "numeric upstream, default port",
			pod:       newPod(),
			wantInits: []corev1.Container{wantSidecar("8080", "8443", defaults)},
		},
		{
			name:      "named upstream resolves through the container's ports",
			pod:       newPod(withAnnotation(keygatev1.AnnotationUpstreamPort, "http")),
			wantInits: []corev1.Container{wantSidecar("8080", "8443", defaults)},
		},
		{
			name:      "explicit sidecar port",
			pod:       newPod(withAnnotation(keygatev1.AnnotationPort, "9443")),
			wantInits: []corev1.Container{wantSidecar("8080", "9443", defaults)},
		},
		{
			name: "resource overrides",
			pod: newPod(
				withAnnotation(AnnotationCPURequest, "100m"), withAnnotation(AnnotationCPULimit, "1"),
				withAnnotation(AnnotationMemoryRequest, "96Mi"), withAnnotation(AnnotationMemoryLimit, "256Mi"),
			),
			wantInits: []corev1.Container{wantSidecar("8080", "8443", overridden)},
		},
		{
			name: "sidecar goes first, before the pod's own init containers",
			pod:  newPod(withInitContainer("migrate")),
			wantInits: []corev1.Container{
				wantSidecar("8080", "8443", defaults),
				{Name: "migrate", Image: "busybox:1.36"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := *tt.pod.Spec.Containers[0].DeepCopy()
			changed, err := inject(tt.pod, testConfig())
			if err != nil {
				t.Fatalf("inject: %v", err)
			}
			if !changed {
				t.Fatal("inject reported no change on a fresh pod")
			}
			if !equality.Semantic.DeepEqual(tt.pod.Spec.InitContainers, tt.wantInits) {
				t.Errorf("init containers:\n got %#v\nwant %#v", tt.pod.Spec.InitContainers, tt.wantInits)
			}
			if len(tt.pod.Spec.Containers) != 1 || !equality.Semantic.DeepEqual(tt.pod.Spec.Containers[0], app) {
				t.Errorf("the app container (and its probes) changed: %#v", tt.pod.Spec.Containers)
			}
			if got := tt.pod.Annotations[keygatev1.AnnotationInjected]; got != "v0.1.0" {
				t.Errorf("annotation %s = %q, want v0.1.0", keygatev1.AnnotationInjected, got)
			}
		})
	}
}

func TestInjectIsIdempotent(t *testing.T) {
	for _, tt := range []struct {
		name string
		pod  *corev1.Pod
	}{
		{"plain", newPod()},
		{"with init containers", newPod(withInitContainer("migrate"), withInitContainer("seed"))},
		{"with overrides", newPod(withAnnotation(AnnotationCPULimit, "2"), withAnnotation(keygatev1.AnnotationPort, "7443"))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := inject(tt.pod, testConfig()); err != nil {
				t.Fatalf("first inject: %v", err)
			}
			once := tt.pod.DeepCopy()
			changed, err := inject(tt.pod, testConfig())
			if err != nil {
				t.Fatalf("second inject: %v", err)
			}
			if changed {
				t.Error("second inject reported a change")
			}
			if !equality.Semantic.DeepEqual(once, tt.pod) {
				t.Errorf("second inject changed the pod:\n got %#v\nwant %#v", tt.pod, once)
			}
		})
	}
}

// tokenMount is what the ServiceAccount admission plugin adds to every
// container of a pod, the injected sidecar included (envtest disables that
// plugin; a real cluster does not).
var tokenMount = corev1.VolumeMount{Name: "kube-api-access-x7k2p", ReadOnly: true, MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}

func mountToken(p *corev1.Pod) {
	for i := range p.Spec.InitContainers {
		p.Spec.InitContainers[i].VolumeMounts = append(p.Spec.InitContainers[i].VolumeMounts, tokenMount)
	}
	for i := range p.Spec.Containers {
		p.Spec.Containers[i].VolumeMounts = append(p.Spec.Containers[i].VolumeMounts, tokenMount)
	}
}

// An injected pod as stored on a real cluster, submitted again: keygate
// compares what it owns, so the token mount makes no difference.
func TestInjectIsIdempotentWithTokenMount(t *testing.T) {
	pod := newPod(withInitContainer("migrate"))
	if _, err := inject(pod, testConfig()); err != nil {
		t.Fatal(err)
	}
	mountToken(pod)
	stored := pod.DeepCopy()
	changed, err := inject(pod, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if changed {
		t.Error("re-admission of an injected pod with the token mount reported a change")
	}
	if !equality.Semantic.DeepEqual(stored, pod) {
		t.Errorf("re-admission changed the pod:\n got %#v\nwant %#v", pod, stored)
	}
}

// A stale sidecar is replaced, but the mounts other plugins gave it stay.
func TestInjectRepairKeepsTokenMount(t *testing.T) {
	pod := newPod()
	if _, err := inject(pod, testConfig()); err != nil {
		t.Fatal(err)
	}
	mountToken(pod)
	pod.Spec.InitContainers[0].Image = "keygate/sidecar:v0.0.9"
	changed, err := inject(pod, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if !changed {
		t.Fatal("a stale sidecar image was not replaced")
	}
	sc := pod.Spec.InitContainers[0]
	if sc.Image != testConfig().Image {
		t.Errorf("image %q, want %q", sc.Image, testConfig().Image)
	}
	if !equality.Semantic.DeepEqual(sc.VolumeMounts, []corev1.VolumeMount{tokenMount}) {
		t.Errorf("volume mounts %v, want the token mount kept", sc.VolumeMounts)
	}
}

func TestInjectRepairsStaleSidecar(t *testing.T) {
	pod := newPod(withInitContainer("migrate"))
	if _, err := inject(pod, testConfig()); err != nil {
		t.Fatal(err)
	}
	// An older injector's sidecar, moved behind another init container.
	pod.Spec.InitContainers[0].Image = "keygate/sidecar:v0.0.9"
	pod.Spec.InitContainers[0], pod.Spec.InitContainers[1] = pod.Spec.InitContainers[1], pod.Spec.InitContainers[0]
	pod.Annotations[keygatev1.AnnotationInjected] = "v0.0.9"

	changed, err := inject(pod, testConfig())
	if err != nil || !changed {
		t.Fatalf("inject = %v, %v; want true, nil", changed, err)
	}
	want := []corev1.Container{wantSidecar("8080", "8443", testConfig().Resources), {Name: "migrate", Image: "busybox:1.36"}}
	if !equality.Semantic.DeepEqual(pod.Spec.InitContainers, want) {
		t.Errorf("init containers:\n got %#v\nwant %#v", pod.Spec.InitContainers, want)
	}
	if pod.Annotations[keygatev1.AnnotationInjected] != "v0.1.0" {
		t.Errorf("injected annotation = %q", pod.Annotations[keygatev1.AnnotationInjected])
	}
}

func TestInjectRefuses(t *testing.T) {
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string // substring of the error message
	}{
		{"missing policy", newPod(withoutAnnotation(keygatev1.AnnotationPolicy)), "annotation keygate.dev/policy is required"},
		{"empty policy", newPod(withAnnotation(keygatev1.AnnotationPolicy, "")), "annotation keygate.dev/policy is required"},
		{"bad policy name", newPod(withAnnotation(keygatev1.AnnotationPolicy, "Pay_ments")), `annotation keygate.dev/policy: "Pay_ments" is not a valid TokenPolicy name`},
		{"missing upstream", newPod(withoutAnnotation(keygatev1.AnnotationUpstreamPort)), "annotation keygate.dev/upstream-port is required"},
		{"upstream zero", newPod(withAnnotation(keygatev1.AnnotationUpstreamPort, "0")), `annotation keygate.dev/upstream-port: "0" is neither a port number`},
		{"upstream too big", newPod(withAnnotation(keygatev1.AnnotationUpstreamPort, "65536")), `annotation keygate.dev/upstream-port: "65536" is neither`},
		{"upstream unknown name", newPod(withAnnotation(keygatev1.AnnotationUpstreamPort, "grpc")), `annotation keygate.dev/upstream-port: "grpc" is neither`},
		{"upstream garbage", newPod(withAnnotation(keygatev1.AnnotationUpstreamPort, "80/tcp")), `annotation keygate.dev/upstream-port: "80/tcp" is neither`},
		{"bad port", newPod(withAnnotation(keygatev1.AnnotationPort, "https")), `annotation keygate.dev/port: "https" is not a port number`},
		{"port out of range", newPod(withAnnotation(keygatev1.AnnotationPort, "70000")), `annotation keygate.dev/port: "70000" is not a port number`},
		{"port clashes with a container", newPod(withAnnotation(keygatev1.AnnotationPort, "8080"), withAnnotation(keygatev1.AnnotationUpstreamPort, "9000")), `annotation keygate.dev/port: port 8080 is already used by container "app"`},
		{"default port clashes with a container", newPod(withContainerPort("tls", 8443)), `annotation keygate.dev/port: port 8443 is already used by container "app"`},
		{"upstream equals sidecar port", newPod(withAnnotation(keygatev1.AnnotationUpstreamPort, "8443")), "annotation keygate.dev/upstream-port: port 8443 is also the sidecar's port"},
		{"upstream is the admin port", newPod(withAnnotation(keygatev1.AnnotationUpstreamPort, "9901")), "annotation keygate.dev/upstream-port: port 9901 is the sidecar's admin port"},
		{"port is the admin port", newPod(withAnnotation(keygatev1.AnnotationPort, "9901")), "annotation keygate.dev/port: port 9901 is the sidecar's admin port"},
		{"container uses the admin port", newPod(withContainerPort("admin", 9901)), `container "app" uses port 9901, the keygate sidecar's admin port`},
		{"container uses a reserved port name", newPod(withContainerPort("keygate", 7000)), `uses the port name "keygate"`},
		{"bad cpu override", newPod(withAnnotation(AnnotationCPURequest, "lots")), `annotation keygate.dev/sidecar-cpu-request: "lots" is not a positive quantity`},
		{"negative memory override", newPod(withAnnotation(AnnotationMemoryLimit, "-1Mi")), `annotation keygate.dev/sidecar-memory-limit: "-1Mi" is not a positive quantity`},
		{"request above limit", newPod(withAnnotation(AnnotationMemoryRequest, "1Gi")), "sidecar memory request 1Gi exceeds its limit 128Mi (annotations keygate.dev/sidecar-memory-request, keygate.dev/sidecar-memory-limit)"},
		{"no service account token", newPod(func(p *corev1.Pod) { no := false; p.Spec.AutomountServiceAccountToken = &no }), "spec.automountServiceAccountToken is false"},
		{"reserved container name", newPod(func(p *corev1.Pod) { p.Spec.Containers[0].Name = "keygate-sidecar" }), `container name "keygate-sidecar" is reserved`},
		{"bad TLS Secret name", newPod(withAnnotation(keygatev1.AnnotationTLSSecret, "Web_TLS")), `annotation keygate.dev/tls-secret: "Web_TLS" is not a valid Secret name`},
		{"empty TLS Secret name", newPod(withAnnotation(keygatev1.AnnotationTLSSecret, "")), `annotation keygate.dev/tls-secret: "" is not a valid Secret name`},
		{"unknown upstream protocol", newPod(withAnnotation(keygatev1.AnnotationUpstreamProtocol, "grpc")), `annotation keygate.dev/upstream-protocol: "grpc" is not a supported protocol`},
		{"reserved TLS volume name", newPod(func(p *corev1.Pod) {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "keygate-tls", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		}), `volume name "keygate-tls" is reserved`},
		{"reserved client CA volume name", newPod(func(p *corev1.Pod) {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "keygate-client-ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "x"}}}})
		}), `volume name "keygate-client-ca" is reserved`},
		{"bad client CA name", newPod(withAnnotation(keygatev1.AnnotationTLSSecret, "web-tls"), withAnnotation(keygatev1.AnnotationTLSClientCA, "Client CA")),
			`annotation keygate.dev/tls-client-ca: "Client CA" is not a valid ConfigMap name`},
		{"client CA without TLS", newPod(withAnnotation(keygatev1.AnnotationTLSClientCA, "clients-ca")),
			`annotation keygate.dev/tls-client-ca needs keygate.dev/tls-secret`},
		{"bad h2c value", newPod(withAnnotation(keygatev1.AnnotationH2C, "yes")), `annotation keygate.dev/h2c: "yes" is neither "true" nor "false"`},
		{"h2c with TLS", newPod(withAnnotation(keygatev1.AnnotationH2C, "true"), withAnnotation(keygatev1.AnnotationTLSSecret, "web-tls")),
			`annotation keygate.dev/h2c: prior-knowledge h2c is for the plain listener`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.pod.DeepCopy()
			changed, err := inject(tt.pod, testConfig())
			if err == nil {
				t.Fatal("inject accepted the pod")
			}
			if !errors.Is(err, ErrInvalidPod) {
				t.Errorf("error %v does not wrap ErrInvalidPod", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if changed || !equality.Semantic.DeepEqual(before, tt.pod) {
				t.Error("a refused pod was changed")
			}
		})
	}
}
