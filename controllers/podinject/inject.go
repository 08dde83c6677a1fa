package podinject

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// ErrInvalidPod marks every refusal caused by the pod itself (a missing or bad
// annotation, a port clash); the message says which annotation.
var ErrInvalidPod = errors.New("pod cannot be injected")

// invalid returns an ErrInvalidPod error with a message for the pod's author.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidPod, fmt.Sprintf(format, args...))
}

// injection is what the annotations of one pod resolve to.
type injection struct {
	policy       string
	upstreamPort int32
	port         int32
	resources    corev1.ResourceRequirements
	// tlsSecret is the Secret the sidecar serves TLS with ("" plain HTTP).
	tlsSecret string
	// clientCA is the ConfigMap of the CAs client certificates must chain to
	// ("" no client certificates).
	clientCA string
	// h2c proxies to the workload over HTTP/2 cleartext.
	h2c bool
	// h2cListener serves HTTP/2 cleartext with prior knowledge on the plain listener.
	h2cListener bool
}

// inject adds the keygate sidecar to pod as its first init container (a native
// sidecar) and records the injection in the keygate.dev/injected annotation.
// It is pure and idempotent: a pod it has already injected with the same cfg
// comes back unchanged (changed == false). A pod that cannot be injected is
// left alone and an error wrapping ErrInvalidPod names the annotation at fault.
func inject(pod *corev1.Pod, cfg Config) (changed bool, err error) {
	in, err := parseAnnotations(pod, cfg)
	if err != nil {
		return false, err
	}
	want := sidecarContainer(in, cfg)

	changed = true
	inits := make([]corev1.Container, 0, len(pod.Spec.InitContainers)+1)
	inits = append(inits, want)
	for i, c := range pod.Spec.InitContainers {
		if c.Name != ContainerName {
			inits = append(inits, c)
			continue
		}
		ours, others := keygateMounts(c.VolumeMounts)
		if i == 0 && equality.Semantic.DeepEqual(owned(c), owned(want)) && equality.Semantic.DeepEqual(ours, want.VolumeMounts) {
			changed = false
		}
		// Other mounts are not keygate's: the ServiceAccount admission plugin
		// adds the token's (kube-api-access-*) to every container, the sidecar's too.
		inits[0].VolumeMounts = append(append([]corev1.VolumeMount(nil), want.VolumeMounts...), others...)
	}
	// The volume is checked on a copy: an unchanged pod is left alone.
	if setTLSVolumes(pod.DeepCopy(), in) {
		changed = true
	}
	if pod.Annotations[keygatev1.AnnotationInjected] != cfg.Version {
		changed = true
	}
	if !changed {
		return false, nil
	}
	pod.Spec.InitContainers = inits
	setTLSVolumes(pod, in)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[keygatev1.AnnotationInjected] = cfg.Version
	return true, nil
}

// parseAnnotations validates the pod's keygate annotations against the pod's
// own containers and resolves them.
func parseAnnotations(pod *corev1.Pod, cfg Config) (injection, error) {
	var in injection
	ann := pod.Annotations

	for _, c := range pod.Spec.Containers {
		if c.Name == ContainerName {
			return in, invalid("container name %q is reserved for the keygate sidecar", ContainerName)
		}
	}

	if t := pod.Spec.AutomountServiceAccountToken; t != nil && !*t {
		return in, invalid("spec.automountServiceAccountToken is false: the keygate sidecar reads its bundle Secret with the pod's service account token")
	}

	policy, ok := ann[keygatev1.AnnotationPolicy]
	if !ok || policy == "" {
		return in, invalid("annotation %s is required: name the TokenPolicy the sidecar enforces", keygatev1.AnnotationPolicy)
	}
	if errs := validation.IsDNS1123Subdomain(policy); len(errs) > 0 {
		return in, invalid("annotation %s: %q is not a valid TokenPolicy name", keygatev1.AnnotationPolicy, policy)
	}
	in.policy = policy

	in.port = DefaultPort
	if v, ok := ann[keygatev1.AnnotationPort]; ok {
		p, err := parsePortNumber(v)
		if err != nil {
			return in, invalid("annotation %s: %q is not a port number (1-65535)", keygatev1.AnnotationPort, v)
		}
		in.port = p
	}

	up, ok := ann[keygatev1.AnnotationUpstreamPort]
	if !ok || up == "" {
		return in, invalid("annotation %s is required: name the main container's port (number or name)", keygatev1.AnnotationUpstreamPort)
	}
	in.upstreamPort, ok = resolveUpstream(pod, up)
	if !ok {
		return in, invalid("annotation %s: %q is neither a port number (1-65535) nor a named port of the pod's containers", keygatev1.AnnotationUpstreamPort, up)
	}

	if err := checkPorts(pod, in); err != nil {
		return in, err
	}

	res, err := resources(ann, cfg.Resources)
	if err != nil {
		return in, err
	}
	in.resources = res
	if err := checkReservedVolumes(pod); err != nil {
		return in, err
	}
	if in.tlsSecret, err = tlsSecret(pod); err != nil {
		return in, err
	}
	if in.clientCA, err = clientCA(pod, in.tlsSecret); err != nil {
		return in, err
	}
	if v, ok := ann[keygatev1.AnnotationH2C]; ok {
		switch {
		case v != "true" && v != "false":
			return in, invalid("annotation %s: %q is neither \"true\" nor \"false\"", keygatev1.AnnotationH2C, v)
		case v == "true" && in.tlsSecret != "":
			return in, invalid("annotation %s: prior-knowledge h2c is for the plain listener; with %s clients get HTTP/2 by ALPN", keygatev1.AnnotationH2C, keygatev1.AnnotationTLSSecret)
		}
		in.h2cListener = v == "true"
	}
	if v, ok := ann[keygatev1.AnnotationUpstreamProtocol]; ok {
		if v != "h2c" {
			return in, invalid("annotation %s: %q is not a supported protocol (h2c, or no annotation for HTTP/1.1)", keygatev1.AnnotationUpstreamProtocol, v)
		}
		in.h2c = true
	}
	return in, nil
}

// parsePortNumber accepts a decimal port number in 1–65535.
func parsePortNumber(s string) (int32, error) {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || len(validation.IsValidPortNum(int(n))) > 0 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return int32(n), nil
}

// resolveUpstream turns the upstream-port annotation into a number: a number
// as is, a name through the ports of the pod's (main) containers.
func resolveUpstream(pod *corev1.Pod, v string) (int32, bool) {
	if p, err := parsePortNumber(v); err == nil {
		return p, true
	}
	if len(validation.IsValidPortName(v)) > 0 {
		return 0, false
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == v {
				return p.ContainerPort, true
			}
		}
	}
	return 0, false
}

// checkPorts refuses a sidecar port or admin port that a container of the pod
// already uses, or an upstream that is one of the sidecar's own ports.
func checkPorts(pod *corev1.Pod, in injection) error {
	if in.port == AdminPort {
		return invalid("annotation %s: port %d is the sidecar's admin port", keygatev1.AnnotationPort, in.port)
	}
	if in.upstreamPort == in.port {
		return invalid("annotation %s: port %d is also the sidecar's port (%s)", keygatev1.AnnotationUpstreamPort, in.upstreamPort, keygatev1.AnnotationPort)
	}
	if in.upstreamPort == AdminPort {
		return invalid("annotation %s: port %d is the sidecar's admin port", keygatev1.AnnotationUpstreamPort, in.upstreamPort)
	}
	containers := make([]corev1.Container, 0, len(pod.Spec.Containers)+len(pod.Spec.InitContainers))
	containers = append(containers, pod.Spec.Containers...)
	for _, c := range pod.Spec.InitContainers {
		if c.Name != ContainerName {
			containers = append(containers, c)
		}
	}
	for _, c := range containers {
		for _, p := range c.Ports {
			switch {
			case p.ContainerPort == in.port:
				return invalid("annotation %s: port %d is already used by container %q", keygatev1.AnnotationPort, in.port, c.Name)
			case p.ContainerPort == AdminPort:
				return invalid("container %q uses port %d, the keygate sidecar's admin port", c.Name, AdminPort)
			case p.Name == PortName || p.Name == AdminPortName:
				return invalid("container %q uses the port name %q, reserved for the keygate sidecar", c.Name, p.Name)
			}
		}
	}
	return nil
}

// resources applies the per-pod override annotations to the defaults.
func resources(ann map[string]string, defaults corev1.ResourceRequirements) (corev1.ResourceRequirements, error) {
	res := *defaults.DeepCopy()
	overrides := []struct {
		annotation string
		list       *corev1.ResourceList
		name       corev1.ResourceName
	}{
		{AnnotationCPURequest, &res.Requests, corev1.ResourceCPU},
		{AnnotationMemoryRequest, &res.Requests, corev1.ResourceMemory},
		{AnnotationCPULimit, &res.Limits, corev1.ResourceCPU},
		{AnnotationMemoryLimit, &res.Limits, corev1.ResourceMemory},
	}
	for _, o := range overrides {
		v, ok := ann[o.annotation]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(v))
		if err != nil || q.Sign() <= 0 {
			return res, invalid("annotation %s: %q is not a positive quantity", o.annotation, v)
		}
		if *o.list == nil {
			*o.list = corev1.ResourceList{}
		}
		(*o.list)[o.name] = q
	}
	for name, req := range res.Requests {
		if lim, ok := res.Limits[name]; ok && req.Cmp(lim) > 0 {
			return res, invalid("sidecar %s request %s exceeds its limit %s (annotations %s)", name, req.String(), lim.String(), strings.Join(resourceAnnotations(name), ", "))
		}
	}
	return res, nil
}

func resourceAnnotations(name corev1.ResourceName) []string {
	if name == corev1.ResourceCPU {
		return []string{AnnotationCPURequest, AnnotationCPULimit}
	}
	return []string{AnnotationMemoryRequest, AnnotationMemoryLimit}
}

// owned is the part of an injected container that keygate sets, for
// comparing with sidecarContainer: everything but what other admission
// plugins add to every container (volume mounts and devices). keygate's own
// mounts (the TLS Secret's and client CA's) are compared apart (keygateMounts).
func owned(c corev1.Container) corev1.Container {
	c.VolumeMounts, c.VolumeDevices = nil, nil
	return c
}

// sidecarContainer is the injected container, spelled out with the values the
// API server would default, so that re-admitting an injected pod compares equal.
func sidecarContainer(in injection, cfg Config) corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path:   path,
				Port:   intstr.FromInt32(AdminPort),
				Scheme: corev1.URISchemeHTTP,
			}},
			TimeoutSeconds:   1,
			PeriodSeconds:    period,
			SuccessThreshold: 1,
			FailureThreshold: failures,
		}
	}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path},
		}}
	}
	args := []string{
		"--policy=" + in.policy,
		"--upstream-port=" + strconv.Itoa(int(in.upstreamPort)),
		"--port=" + strconv.Itoa(int(in.port)),
		"--admin-port=" + strconv.Itoa(int(AdminPort)),
	}
	if in.h2c {
		args = append(args, "--upstream-protocol=h2c")
	}
	if in.h2cListener {
		args = append(args, "--h2c")
	}
	args = append(args, tlsArgs(in)...)
	mounts := tlsMounts(in)
	return corev1.Container{
		Name:            ContainerName,
		Image:           cfg.Image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            args,
		VolumeMounts:    mounts,
		Env: []corev1.EnvVar{
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("POD_NAME", "metadata.name"),
		},
		Ports: []corev1.ContainerPort{
			{Name: PortName, ContainerPort: in.port, Protocol: corev1.ProtocolTCP},
			{Name: AdminPortName, ContainerPort: AdminPort, Protocol: corev1.ProtocolTCP},
		},
		Resources:     in.resources,
		RestartPolicy: &always,
		// Up to 2 minutes (120 × 1s) to load the first bundle; the app starts after.
		StartupProbe:   probe("/readyz", 1, 120),
		ReadinessProbe: probe("/readyz", 5, 3),
		LivenessProbe:  probe("/healthz", 10, 3),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(sidecarUID),
			RunAsGroup:               ptr(sidecarUID),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePath:   corev1.TerminationMessagePathDefault,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

func ptr[T any](v T) *T { return &v }
