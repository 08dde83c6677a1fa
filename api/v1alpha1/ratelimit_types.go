package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RateLimit is a token bucket: up to burst requests at once, refilled at
// requests per per. Each sidecar replica keeps its own buckets, so with N
// replicas behind a load balancer a caller may get up to N times the limit.
// Over the limit the sidecar answers 429 with Retry-After and the IETF
// RateLimit-Policy and RateLimit headers.
type RateLimit struct {
	// requests allowed per period, on average.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	Requests int32 `json:"requests"`

	// per is the period over which requests are allowed, such as 1s or 1m,
	// from 1s to 24h. Defaults to 1s.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="per must be between 1s and 24h"
	Per *metav1.Duration `json:"per,omitempty"`

	// burst is how many requests may come at once, from a full bucket.
	// Defaults to requests.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	Burst *int32 `json:"burst,omitempty"`
}
