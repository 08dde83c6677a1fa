package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PolicyReference names a TokenPolicy in the same namespace.
type PolicyReference struct {
	// name of the TokenPolicy, in the ApiKey's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
}

// ApiKeyClient is a sub-client of the key's owner (a customer of the platform)
// that may get client tokens carrying a subset of the key's permissions.
type ApiKeyClient struct {
	// key identifies the client in token requests (the "clientKey" body field or
	// the X-Keygate-Client-Key header).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9_.@-]*$`
	Key string `json:"key"`

	// permissions the client's tokens carry; each must be granted by the key's
	// own permissions ("charges:All" on the key covers "charges:List" here).
	// Empty means the client's tokens carry no permission.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	Permissions []Permission `json:"permissions,omitempty"`

	// rateLimit applies to requests carrying this client's tokens or client
	// key, in a bucket of the client's own, per sidecar replica. Unset means
	// the key's limit, shared with the key's other callers.
	// +optional
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
}

// KeyRotation schedules automatic secret rotation.
// +kubebuilder:validation:XValidation:rule="!has(self.interval) || !has(self.gracePeriod) || duration(self.gracePeriod) <= duration(self.interval)",message="gracePeriod (default 24h) must not be longer than interval",fieldPath=".gracePeriod"
type KeyRotation struct {
	// interval after which the operator writes a new secret, such as 720h.
	// Unset means rotation happens only on demand (the keygate.dev/rotate annotation).
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="interval must be at least 1m"
	Interval *metav1.Duration `json:"interval,omitempty"`

	// gracePeriod during which the previous secret keeps working after a
	// rotation, such as 24h. 0s ends it at once. Defaults to 24h.
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s')",message="gracePeriod must not be negative"
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`
}

// ApiKeySpec declares an API key: its policy, permissions and restrictions.
// +kubebuilder:validation:XValidation:rule="!has(self.clients) || self.clients.all(c, !has(c.permissions) || c.permissions.all(p, has(self.permissions) && (p in self.permissions || (p.substring(0, p.indexOf(':')) + ':All') in self.permissions)))",message="every client permission must be granted by the key's permissions (resource:All covers resource:X)",fieldPath=".clients"
type ApiKeySpec struct {
	// policyRef names the TokenPolicy, in the same namespace, that governs the key.
	// +required
	PolicyRef PolicyReference `json:"policyRef"`

	// permissions granted to the key, as "resource:Action" ("charges:List",
	// "reports:All"). Empty means the key may only call routes that need no
	// permission.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	Permissions []Permission `json:"permissions,omitempty"`

	// allowedCIDRs restricts the client addresses the key and its tokens work
	// from, in CIDR notation. Empty means any address the policy allows.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	AllowedCIDRs []CIDR `json:"allowedCIDRs,omitempty"`

	// clients are sub-clients that may get client tokens with a subset of the
	// key's permissions.
	// +optional
	// +listType=map
	// +listMapKey=key
	// +kubebuilder:validation:MaxItems=32
	Clients []ApiKeyClient `json:"clients,omitempty"`

	// expiresAt is the time (RFC 3339) after which the key stops working.
	// Unset means the key does not expire.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// disabled turns the key off without deleting it. Defaults to false.
	// +optional
	Disabled bool `json:"disabled,omitempty"`

	// rotation schedules automatic secret rotation and sets the grace period of
	// every rotation, including on-demand ones.
	// +optional
	Rotation *KeyRotation `json:"rotation,omitempty"`

	// secretName is the name of the Secret that receives the key ID and secret.
	// Defaults to "<name>-credentials".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName,omitempty"`

	// rateLimit is the key's request rate limit, enforced by each sidecar
	// replica (with N replicas the key may get up to N times the limit); its
	// token requests count in a bucket of their own with the same limit.
	// Unset means the policy's rateLimit, if any.
	// +optional
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
}

// ApiKeyStatus is the observed state of an ApiKey. It never holds a secret.
type ApiKeyStatus struct {
	// keyID is the generated public key identifier, such as apk-1wtRxni5IsPsSpBLWpwr.
	// +optional
	KeyID string `json:"keyID,omitempty"`

	// secretName is the Secret holding the key ID and secret.
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// secretVersion counts the secrets written; it grows by one on every rotation.
	// +optional
	SecretVersion int64 `json:"secretVersion,omitempty"`

	// lastRotationTime is when the current secret was written.
	// +optional
	LastRotationTime *metav1.Time `json:"lastRotationTime,omitempty"`

	// previousSecretExpiresAt is when the previous secret stops working, while
	// a grace period runs.
	// +optional
	PreviousSecretExpiresAt *metav1.Time `json:"previousSecretExpiresAt,omitempty"`

	// expiresAt is when the key expires, copied from the spec.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// lastRotateRequest is the last value of the keygate.dev/rotate annotation
	// that the operator acted on.
	// +optional
	LastRotateRequest string `json:"lastRotateRequest,omitempty"`

	// lastUsedTime is the minute in which a request last authenticated with
	// the key (or one of its tokens), as the sidecars report it; unset if never.
	// +optional
	LastUsedTime *metav1.Time `json:"lastUsedTime,omitempty"`

	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions describe the key's state; Ready tells whether it works,
	// Stale whether it went unused for the policy's staleAfter.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ApiKey is a credential (key ID and secret) that API consumers use against
// workloads protected by a TokenPolicy.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ak,categories=keygate
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.policyRef.name`
// +kubebuilder:printcolumn:name="Key ID",type=string,JSONPath=`.status.keyID`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Last Used",type=date,JSONPath=`.status.lastUsedTime`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.status.expiresAt`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ApiKey struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec declares the key.
	// +required
	Spec ApiKeySpec `json:"spec"`

	// status is the key's observed state.
	// +optional
	Status ApiKeyStatus `json:"status,omitempty"`
}

// ApiKeyList is a list of ApiKeys.
// +kubebuilder:object:root=true
type ApiKeyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ApiKey `json:"items"`
}
