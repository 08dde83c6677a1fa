package podinject

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// The TLS Secret of keygate.dev/tls-secret is mounted read-only into the
// sidecar under TLSMountPath; the sidecar serves it with --tls-cert-file and
// --tls-key-file and reloads it when the kubelet updates the volume.
const (
	// TLSVolumeName is the pod volume keygate adds for the TLS Secret (reserved).
	TLSVolumeName = "keygate-tls"
	// TLSMountPath is where the sidecar reads tls.crt and tls.key.
	TLSMountPath = "/var/run/keygate/tls"
)

// tlsSecret validates the keygate.dev/tls-secret annotation: "" without it.
// A Secret that does not exist is not refused here: the kubelet keeps the pod
// Pending until it does, as for any Secret volume. The volume name
// keygate-tls is reserved: only an injected pod's own is replaced or removed.
func tlsSecret(pod *corev1.Pod) (string, error) {
	for _, v := range pod.Spec.Volumes {
		if v.Name == TLSVolumeName && (v.Secret == nil || pod.Annotations[keygatev1.AnnotationInjected] == "") {
			return "", invalid("volume name %q is reserved for the keygate sidecar's TLS Secret (annotation %s)", TLSVolumeName, keygatev1.AnnotationTLSSecret)
		}
	}
	name, ok := pod.Annotations[keygatev1.AnnotationTLSSecret]
	if !ok {
		return "", nil
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", invalid("annotation %s: %q is not a valid Secret name", keygatev1.AnnotationTLSSecret, name)
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

func tlsMount() corev1.VolumeMount {
	return corev1.VolumeMount{Name: TLSVolumeName, MountPath: TLSMountPath, ReadOnly: true}
}

func tlsArgs() []string {
	return []string{"--tls-cert-file=" + TLSMountPath + "/" + corev1.TLSCertKey, "--tls-key-file=" + TLSMountPath + "/" + corev1.TLSPrivateKeyKey}
}

// setTLSVolume makes the pod's keygate-tls volume match secret ("" removes
// it) and reports whether it changed the pod.
func setTLSVolume(pod *corev1.Pod, secret string) bool {
	vols := make([]corev1.Volume, 0, len(pod.Spec.Volumes)+1)
	changed, found := false, false
	for _, v := range pod.Spec.Volumes {
		if v.Name != TLSVolumeName {
			vols = append(vols, v)
			continue
		}
		found = true
		if secret == "" {
			changed = true
			continue
		}
		want := tlsVolume(secret)
		if !equality.Semantic.DeepEqual(v, want) {
			v, changed = want, true
		}
		vols = append(vols, v)
	}
	if secret != "" && !found {
		vols, changed = append(vols, tlsVolume(secret)), true
	}
	if changed {
		pod.Spec.Volumes = vols
	}
	return changed
}

// keygateMounts splits a container's mounts into keygate's and the others
// (added by other admission plugins, kept as they are).
func keygateMounts(mounts []corev1.VolumeMount) (ours, others []corev1.VolumeMount) {
	for _, m := range mounts {
		if m.Name == TLSVolumeName {
			ours = append(ours, m)
		} else {
			others = append(others, m)
		}
	}
	return ours, others
}
