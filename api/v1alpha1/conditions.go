package v1alpha1

// Condition types.
const (
	// ConditionReady tells whether the object is in force.
	ConditionReady = "Ready"
	// ConditionReconciling is True while the operator works towards the spec.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when the spec cannot be acted on until it changes.
	ConditionStalled = "Stalled"
	// ConditionStale is True on a Ready ApiKey unused for its policy's staleAfter.
	ConditionStale = "Stale"
)

// Condition reasons; Events use the same words.
const (
	ReasonReady           = "Ready"
	ReasonPolicyNotFound  = "PolicyNotFound"
	ReasonLimitExceeded   = "LimitExceeded"
	ReasonExpired         = "Expired"
	ReasonDisabled        = "Disabled"
	ReasonSecretConflict  = "SecretConflict"
	ReasonRotated         = "Rotated"
	ReasonSecretReplaced  = "SecretReplaced"
	ReasonBundleUpdated   = "BundleUpdated"
	ReasonSigningRotated  = "SigningKeyRotated"
	ReasonProgressing     = "Progressing"
	ReasonReconcileFailed = "ReconcileFailed"
	// ReasonBundleTooLarge: a TokenPolicy's accepted keys do not all fit in its
	// bundle Secret (1 MiB). The operator still publishes the bundle, with the
	// oldest keys that fit (removals are never held back); the TokenPolicy is
	// Ready=False with this reason, and so is each ApiKey left out.
	ReasonBundleTooLarge = "BundleTooLarge"
	// ReasonUnused: the key went unused for staleAfter (Stale=True).
	ReasonUnused = "Unused"
	// ReasonRecentlyUsed: the key was used within staleAfter (Stale=False).
	ReasonRecentlyUsed = "RecentlyUsed"
	// ReasonNotInBundle: an ApiKey is accepted but the bundle Secret its
	// sidecars read does not carry its current secret (yet): a new key or a
	// rotation before the operator publishes the next bundle. An ApiKey is
	// Ready only when the bundle carries its current secret's digest.
	ReasonNotInBundle = "NotInBundle"
)

// Labels and annotations.
const (
	// LabelManagedBy marks objects keygate writes.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is LabelManagedBy's value.
	ManagedByValue = "keygate"
	// LabelApiKey names the ApiKey a credentials Secret belongs to.
	LabelApiKey = "keygate.dev/api-key"
	// LabelTokenPolicy names the TokenPolicy an object belongs to.
	LabelTokenPolicy = "keygate.dev/token-policy"
	// AnnotationRotate asks for a rotation whenever its value changes.
	AnnotationRotate = "keygate.dev/rotate"
	// LabelInject opts a pod in to sidecar injection.
	LabelInject = "keygate.dev/inject"
	// AnnotationPolicy names the TokenPolicy an injected sidecar enforces.
	AnnotationPolicy = "keygate.dev/policy"
	// AnnotationUpstreamPort is the main container's port the sidecar forwards to.
	AnnotationUpstreamPort = "keygate.dev/upstream-port"
	// AnnotationPort is the sidecar's listening port (default 8443).
	AnnotationPort = "keygate.dev/port"
	// AnnotationInjected records that (and by which version) a pod was injected.
	AnnotationInjected = "keygate.dev/injected"
	// AnnotationTLSSecret names a kubernetes.io/tls Secret in the pod's
	// namespace that the sidecar serves TLS with (reloaded on change).
	AnnotationTLSSecret = "keygate.dev/tls-secret"
	// AnnotationUpstreamProtocol is "h2c" for a workload that speaks HTTP/2
	// cleartext (gRPC servers); absent, the sidecar proxies HTTP/1.1.
	AnnotationUpstreamProtocol = "keygate.dev/upstream-protocol"
	// AnnotationTLSClientCA names a ConfigMap in the pod's namespace whose
	// key ca.crt holds the PEM CAs client certificates must chain to (needs
	// AnnotationTLSSecret).
	AnnotationTLSClientCA = "keygate.dev/tls-client-ca"
	// AnnotationH2C is "true" to serve HTTP/2 cleartext with prior knowledge
	// on the sidecar's plain listener (not with AnnotationTLSSecret).
	AnnotationH2C = "keygate.dev/h2c"
)
