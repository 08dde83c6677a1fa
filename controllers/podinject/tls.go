package podinject

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// The TLS Secret of keygate.dev/tls-secret is mounted read-only into the
// sidecar under TLSMountPath; the sidecar serves it with --tls-cert-file and
// --tls-key-file and reloads it when the kubelet updates the volume. The
// ConfigMap of keygate.dev/tls-client-ca is mounted the same way under
// ClientCAMountPath for --tls-client-ca-file.
const (
	// TLSVolumeName is the pod volume keygate adds for the TLS Secret (reserved).
	TLSVolumeName = "keygate-tls"
	// TLSMountPath is where the sidecar reads tls.crt and tls.key.
	TLSMountPath = "/var/run/keygate/tls"
	// ClientCAVolumeName is the pod volume keygate adds for the client CA
	// ConfigMap (reserved).
	ClientCAVolumeName = "keygate-client-ca"
	// ClientCAMountPath is where the sidecar reads ClientCAKey.
	ClientCAMountPath = "/var/run/keygate/client-ca"
	// ClientCAKey is the ConfigMap key holding the PEM CA certificates (the
	// key cert-manager's trust-manager and CA injectors write).
	ClientCAKey = "ca.crt"
)

// tlsVolumes are the names of the volumes keygate owns in an injected pod.
var tlsVolumes = []string{TLSVolumeName, ClientCAVolumeName}

// checkReservedVolumes refuses a pod that has a volume of keygate's names it
// did not add (only an injected pod's own are replaced or removed).
func checkReservedVolumes(pod *corev1.Pod) error {
	for _, v := range pod.Spec.Volumes {
		injected := pod.Annotations[keygatev1.AnnotationInjected] != ""
		switch {
		case v.Name == TLSVolumeName && (v.Secret == nil || !injected):
			return invalid("volume name %q is reserved for the keygate sidecar's TLS Secret (annotation %s)", TLSVolumeName, keygatev1.AnnotationTLSSecret)
		case v.Name == ClientCAVolumeName && (v.ConfigMap == nil || !injected):
			return invalid("volume name %q is reserved for the keygate sidecar's client CA ConfigMap (annotation %s)", ClientCAVolumeName, keygatev1.AnnotationTLSClientCA)
		}
	}
	return nil
}

// tlsSecret validates the keygate.dev/tls-secret annotation: "" without it.
// A Secret that does not exist is not refused here: the kubelet keeps the pod
// Pending until it does, as for any Secret volume.
func tlsSecret(pod *corev1.Pod) (string, error) {
	name, ok := pod.Annotations[keygatev1.AnnotationTLSSecret]
	if !ok {
		return "", nil
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", invalid("annotation %s: %q is not a valid Secret name", keygatev1.AnnotationTLSSecret, name)
	}
	return name, nil
}

// clientCA validates the keygate.dev/tls-client-ca annotation: "" without it.
// Client certificates are verified by the TLS listener, so it needs
// keygate.dev/tls-secret. A missing ConfigMap (or one without ca.crt) keeps
// the pod Pending, as for any ConfigMap volume.
func clientCA(pod *corev1.Pod, tlsSecret string) (string, error) {
	name, ok := pod.Annotations[keygatev1.AnnotationTLSClientCA]
	if !ok {
		return "", nil
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", invalid("annotation %s: %q is not a valid ConfigMap name", keygatev1.AnnotationTLSClientCA, name)
	}
	if tlsSecret == "" {
		return "", invalid("annotation %s needs %s: client certificates are verified by the sidecar's TLS listener", keygatev1.AnnotationTLSClientCA, keygatev1.AnnotationTLSSecret)
	}
	return name, nil
}

// tlsVolume is the pod volume of the TLS Secret, spelled out with the API
// server's defaults so that re-admission compares equal.
func tlsVolume(secret string) corev1.Volume {
	return corev1.Volume{Name: TLSVolumeName, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName: secret, DefaultMode: ptr(int32(0o444)),
		Items: []corev1.KeyToPath{{Key: corev1.TLSCertKey, Path: corev1.TLSCertKey}, {Key: corev1.TLSPrivateKeyKey, Path: corev1.TLSPrivateKeyKey}},
	}}}
}

// clientCAVolume is the pod volume of the client CA ConfigMap (only ca.crt),
// with the API server's defaults.
func clientCAVolume(configMap string) corev1.Volume {
	return corev1.Volume{Name: ClientCAVolumeName, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: configMap}, DefaultMode: ptr(int32(0o444)),
		Items: []corev1.KeyToPath{{Key: ClientCAKey, Path: ClientCAKey}},
	}}}
}

// tlsMounts are the sidecar's mounts of the volumes of in.
func tlsMounts(in injection) []corev1.VolumeMount {
	var mounts []corev1.VolumeMount
	if in.tlsSecret != "" {
		mounts = append(mounts, corev1.VolumeMount{Name: TLSVolumeName, MountPath: TLSMountPath, ReadOnly: true})
	}
	if in.clientCA != "" {
		mounts = append(mounts, corev1.VolumeMount{Name: ClientCAVolumeName, MountPath: ClientCAMountPath, ReadOnly: true})
	}
	return mounts
}

func tlsArgs(in injection) []string {
	var args []string
	if in.tlsSecret != "" {
		args = append(args, "--tls-cert-file="+TLSMountPath+"/"+corev1.TLSCertKey, "--tls-key-file="+TLSMountPath+"/"+corev1.TLSPrivateKeyKey)
	}
	if in.clientCA != "" {
		args = append(args, "--tls-client-ca-file="+ClientCAMountPath+"/"+ClientCAKey)
	}
	return args
}

// setTLSVolumes makes the pod's keygate volumes match in (a volume whose
// annotation is gone is removed) and reports whether it changed the pod.
func setTLSVolumes(pod *corev1.Pod, in injection) bool {
	want := map[string]*corev1.Volume{}
	if in.tlsSecret != "" {
		v := tlsVolume(in.tlsSecret)
		want[TLSVolumeName] = &v
	}
	if in.clientCA != "" {
		v := clientCAVolume(in.clientCA)
		want[ClientCAVolumeName] = &v
	}
	vols := make([]corev1.Volume, 0, len(pod.Spec.Volumes)+len(want))
	changed := false
	found := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if !isTLSVolume(v.Name) {
			vols = append(vols, v)
			continue
		}
		found[v.Name] = true
		w := want[v.Name]
		if w == nil {
			changed = true
			continue
		}
		if !equality.Semantic.DeepEqual(v, *w) {
			v, changed = *w, true
		}
		vols = append(vols, v)
	}
	for _, name := range tlsVolumes {
		if w := want[name]; w != nil && !found[name] {
			vols, changed = append(vols, *w), true
		}
	}
	if changed {
		pod.Spec.Volumes = vols
	}
	return changed
}

func isTLSVolume(name string) bool {
	return name == TLSVolumeName || name == ClientCAVolumeName
}

// keygateMounts splits a container's mounts into keygate's and the others
// (added by other admission plugins, kept as they are).
func keygateMounts(mounts []corev1.VolumeMount) (ours, others []corev1.VolumeMount) {
	for _, m := range mounts {
		if isTLSVolume(m.Name) {
			ours = append(ours, m)
		} else {
			others = append(others, m)
		}
	}
	return ours, others
}
