package podinject

import (
	corev1 "k8s.io/api/core/v1"
)

// Names of the injected container and its ports.
const (
	// ContainerName is the name of the injected native sidecar.
	ContainerName = "keygate-sidecar"
	// PortName names the sidecar's serving port.
	PortName = "keygate"
	// AdminPortName names the sidecar's admin port (/healthz, /readyz, /metrics).
	AdminPortName = "keygate-admin"
	// DefaultPort is the sidecar's serving port when keygate.dev/port is absent.
	DefaultPort int32 = 8443
	// AdminPort is the sidecar's admin port.
	AdminPort int32 = 9901
	// DefaultImage is the sidecar image when the manager is given none. Pinned, never latest.
	DefaultImage = "keygate/sidecar:v0.1.0"
	// DefaultVersion is the injector version recorded in keygate.dev/injected.
	DefaultVersion = "v0.1.0"
	// sidecarUID is the non-root user the sidecar runs as (distroless "nonroot").
	sidecarUID int64 = 65532
)

// Resource override annotations: each, when present, replaces the manager's
// default for the sidecar of that pod. Values are Kubernetes quantities.
const (
	AnnotationCPURequest    = "keygate.dev/sidecar-cpu-request"
	AnnotationCPULimit      = "keygate.dev/sidecar-cpu-limit"
	AnnotationMemoryRequest = "keygate.dev/sidecar-memory-request"
	AnnotationMemoryLimit   = "keygate.dev/sidecar-memory-limit"
)

// Config is what inject needs besides the pod: it is built once from the
// manager's flags and never changes.
type Config struct {
	// Image is the sidecar image.
	Image string
	// Version is recorded as the value of keygate.dev/injected.
	Version string
	// Resources are the sidecar's default requests and limits.
	Resources corev1.ResourceRequirements
}
