package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SigningAlgorithm is the JWS algorithm of the policy's tokens.
// +kubebuilder:validation:Enum=EdDSA;ES256;RS256;HS256
type SigningAlgorithm string

// Signing algorithms.
const (
	EdDSA SigningAlgorithm = "EdDSA"
	ES256 SigningAlgorithm = "ES256"
	RS256 SigningAlgorithm = "RS256"
	HS256 SigningAlgorithm = "HS256"
)

// GrantType is a way of obtaining a token from the token endpoint.
// +kubebuilder:validation:Enum=api_key;client_credentials;client_token;password
type GrantType string

// Grant types.
const (
	// GrantAPIKey is the JSON {"apiKey","secret"} request (Sendforsign).
	GrantAPIKey GrantType = "api_key"
	// GrantClientCredentials is OAuth 2.0 client_credentials (RFC 6749 §4.4).
	GrantClientCredentials GrantType = "client_credentials"
	// GrantClientToken is a client token for one of the key's clients.
	GrantClientToken GrantType = "client_token"
	// GrantPassword is OAuth 2.0 password (RFC 6749 §4.3, syncAccess); off by default (RFC 9700).
	GrantPassword GrantType = "password"
)

// DefaultAction decides requests that no rule matches.
// +kubebuilder:validation:Enum=Deny;Authenticated
type DefaultAction string

// Default actions.
const (
	// ActionDeny refuses requests no rule matches with 403.
	ActionDeny DefaultAction = "Deny"
	// ActionAuthenticated lets through any authenticated request no rule matches.
	ActionAuthenticated DefaultAction = "Authenticated"
)

// Enforcement says whether the sidecars refuse the requests the policy denies.
// +kubebuilder:validation:Enum=Enforce;Audit
type Enforcement string

// Enforcement modes.
const (
	// EnforcementEnforce refuses denied requests (401, 403, 429).
	EnforcementEnforce Enforcement = "Enforce"
	// EnforcementAudit forwards denied requests with X-Keygate-Decision saying
	// what Enforce would have done.
	EnforcementAudit Enforcement = "Audit"
)

// Signing configures how tokens are signed.
type Signing struct {
	// algorithm of the token signatures: EdDSA (Ed25519), ES256, RS256 or HS256.
	// Defaults to EdDSA. Changing it rotates the signing key.
	// +optional
	// +kubebuilder:default=EdDSA
	Algorithm SigningAlgorithm `json:"algorithm,omitempty"`

	// rotationInterval after which a new signing key becomes current; the
	// previous one keeps verifying until every token it signed has expired.
	// Defaults to 720h.
	// +optional
	// +kubebuilder:default="720h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="rotationInterval must be at least 1m"
	RotationInterval *metav1.Duration `json:"rotationInterval,omitempty"`
}

// Authentication selects the ways requests may authenticate.
type Authentication struct {
	// basic accepts "Authorization: Basic base64(keyID:secret)". Defaults to true.
	// +optional
	// +kubebuilder:default=true
	Basic *bool `json:"basic,omitempty"`

	// bearerSchemes are the Authorization scheme words that carry a token,
	// matched case-insensitively, such as Bearer or EN. The first one is used in
	// the auth_header field of token responses. Defaults to [Bearer].
	// +optional
	// +kubebuilder:default={"Bearer"}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z][A-Za-z0-9_.-]*$`
	// +kubebuilder:validation:items:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.exists(w, w.lowerAscii() == 'basic')",message="bearerSchemes must not contain Basic"
	BearerSchemes []string `json:"bearerSchemes,omitempty"`

	// apiKeyHeader names a request header that may hold "<key ID>:<secret>"
	// (for example X-Sendforsign-Key). Empty turns it off, the default.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9-]*$`
	// +kubebuilder:validation:XValidation:rule="!(self.lowerAscii() in ['authorization', 'host', 'cookie', 'x-forwarded-for'] || self.lowerAscii().startsWith('x-keygate-'))",message="apiKeyHeader must not be a reserved header (Authorization, Host, Cookie, X-Forwarded-For, X-Keygate-*)"
	APIKeyHeader string `json:"apiKeyHeader,omitempty"`
}

// TokenEndpoint configures where tokens are issued.
type TokenEndpoint struct {
	// paths on which the sidecar serves the token endpoint. Defaults to
	// [/api/token, /oauth/token, /token].
	// +optional
	// +listType=set
	// +kubebuilder:default={"/api/token","/oauth/token","/token"}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	Paths []URLPath `json:"paths,omitempty"`

	// requireTLS refuses to issue tokens over plain HTTP: the token paths
	// answer 400 invalid_request ("the token endpoint requires HTTPS") unless
	// the request reached the sidecar over TLS (annotation
	// keygate.dev/tls-secret) or came from a trustedProxies peer with
	// X-Forwarded-Proto: https. Defaults to false, so that existing policies
	// keep working.
	// +optional
	RequireTLS bool `json:"requireTLS,omitempty"`
}

// Rule grants requests that match its methods and paths to callers holding its permission.
type Rule struct {
	// methods the rule matches, such as GET or POST; "*" or empty matches every method.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=9
	// +kubebuilder:validation:items:Enum=GET;HEAD;POST;PUT;PATCH;DELETE;OPTIONS;CONNECT;TRACE;"*"
	Methods []string `json:"methods,omitempty"`

	// paths the rule matches: exact paths, or a prefix ending in "/*" that
	// matches every path below it.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	Paths []URLPath `json:"paths"`

	// permission the caller must hold, as "resource:Action".
	// +required
	Permission Permission `json:"permission"`
}

// TokenPolicySpec declares how a workload's API authenticates and authorises callers.
type TokenPolicySpec struct {
	// issuer is the "iss" claim of issued tokens, usually the API's base URL.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^https?://[^\s]+$`
	Issuer string `json:"issuer"`

	// audience is the "aud" claim of issued tokens, such as payments-api.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Audience string `json:"audience"`

	// tokenTTL is the lifetime of platform tokens, such as 1h (production) or
	// 168h (sandbox). Defaults to 1h.
	// +optional
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('8760h')",message="tokenTTL must be between 1s and 8760h"
	TokenTTL *metav1.Duration `json:"tokenTTL,omitempty"`

	// clientTokenTTL is the lifetime of client tokens. Defaults to 15m.
	// +optional
	// +kubebuilder:default="15m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('8760h')",message="clientTokenTTL must be between 1s and 8760h"
	ClientTokenTTL *metav1.Duration `json:"clientTokenTTL,omitempty"`

	// signing configures the token signatures.
	// +optional
	// +kubebuilder:default={}
	Signing Signing `json:"signing,omitempty"`

	// authentication selects how requests may authenticate.
	// +optional
	// +kubebuilder:default={}
	Authentication Authentication `json:"authentication,omitempty"`

	// grants are the token-endpoint flows that are on. Defaults to
	// [api_key, client_credentials, client_token]; add password for
	// syncAccess-style clients.
	// +optional
	// +listType=set
	// +kubebuilder:default={"api_key","client_credentials","client_token"}
	// +kubebuilder:validation:MaxItems=4
	Grants []GrantType `json:"grants,omitempty"`

	// tokenEndpoint configures the token endpoint's paths and whether it
	// requires TLS.
	// +optional
	// +kubebuilder:default={}
	TokenEndpoint TokenEndpoint `json:"tokenEndpoint,omitempty"`

	// maxApiKeys is the most ApiKeys the policy accepts; the newest beyond it
	// are refused with reason LimitExceeded. Defaults to 40, at most 100000.
	// Above 2000 the bundle is sharded over several Secrets (docs/bundle.md).
	// +optional
	// +kubebuilder:default=40
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	MaxApiKeys int32 `json:"maxApiKeys,omitempty"`

	// allowedCIDRs restricts every key of the policy to these client address
	// blocks. Empty means any address.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	AllowedCIDRs []CIDR `json:"allowedCIDRs,omitempty"`

	// trustedProxies are the peers whose X-Forwarded-For header is believed.
	// Empty (the default) trusts nobody: the client address is the socket peer.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	TrustedProxies []CIDR `json:"trustedProxies,omitempty"`

	// publicPaths are served without authentication (exact match). Defaults to [/healthz].
	// +optional
	// +listType=set
	// +kubebuilder:default={"/healthz"}
	// +kubebuilder:validation:MaxItems=64
	PublicPaths []URLPath `json:"publicPaths,omitempty"`

	// rules map requests to the permission they need; the first match wins.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	Rules []Rule `json:"rules,omitempty"`

	// defaultAction decides requests no rule matches: Deny (403) or
	// Authenticated (any authenticated caller). Defaults to Deny.
	// +optional
	// +kubebuilder:default=Deny
	DefaultAction DefaultAction `json:"defaultAction,omitempty"`

	// enforcement is Enforce (the default): requests the policy denies are
	// refused; or Audit: on the request path to the workload nothing is
	// refused, every request is forwarded with the header
	// "X-Keygate-Decision: allow" or "deny; reason=<unauthenticated|
	// forbidden:<permission>|cidr|revoked|ratelimited>", denials are logged and
	// counted in keygate_sidecar_audit_denials_total. Identity headers are set
	// only for callers that authenticated. The token endpoint, revocation and
	// introspection behave as under Enforce. Use Audit to roll a policy out:
	// watch the denial metric fall to zero, then switch to Enforce.
	// +optional
	// +kubebuilder:default=Enforce
	Enforcement Enforcement `json:"enforcement,omitempty"`

	// rateLimit is the request rate limit of every key of the policy that sets
	// none of its own, enforced per key by each sidecar replica (with N
	// replicas a key may get up to N times the limit). The token endpoint
	// counts a key's token requests in a bucket of their own with the same
	// limit. Unset means no limit.
	// +optional
	RateLimit *RateLimit `json:"rateLimit,omitempty"`

	// staleAfter marks a Ready key of the policy Stale (condition Stale=True,
	// an Event, the keygate_apikeys_stale metric) once no request has
	// authenticated with it for this long, or, if it was never used, this long
	// after its creation. Nothing is disabled automatically. Usage is recorded
	// by the sidecars to the minute. Unset turns stale detection off.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="staleAfter must be at least 1h"
	StaleAfter *metav1.Duration `json:"staleAfter,omitempty"`
}

// TokenPolicyStatus is the observed state of a TokenPolicy.
type TokenPolicyStatus struct {
	// apiKeys is the number of Ready ApiKeys in the policy's bundle.
	// +optional
	ApiKeys int32 `json:"apiKeys,omitempty"`

	// signingKeyID is the key ID ("kid") of the current signing key.
	// +optional
	SigningKeyID string `json:"signingKeyID,omitempty"`

	// enforcement is the mode the sidecars enforce, from the bundle last
	// written: Enforce or Audit.
	// +optional
	Enforcement Enforcement `json:"enforcement,omitempty"`

	// bundleSecretName is the Secret the sidecars read, keygate-<policy>.
	// +optional
	BundleSecretName string `json:"bundleSecretName,omitempty"`

	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions describe the policy's state; Ready tells whether its bundle is current.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TokenPolicy declares how a workload's API issues tokens and checks requests;
// the sidecars injected into its pods enforce it.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=tp,categories=keygate
// +kubebuilder:printcolumn:name="Issuer",type=string,JSONPath=`.spec.issuer`
// +kubebuilder:printcolumn:name="Algorithm",type=string,JSONPath=`.spec.signing.algorithm`
// +kubebuilder:printcolumn:name="Keys",type=integer,JSONPath=`.status.apiKeys`
// +kubebuilder:printcolumn:name="Enforcement",type=string,JSONPath=`.status.enforcement`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TokenPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec declares the policy.
	// +required
	Spec TokenPolicySpec `json:"spec"`

	// status is the policy's observed state.
	// +optional
	Status TokenPolicyStatus `json:"status,omitempty"`
}

// TokenPolicyList is a list of TokenPolicies.
// +kubebuilder:object:root=true
type TokenPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TokenPolicy `json:"items"`
}
