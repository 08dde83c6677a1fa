package v1alpha1

// Permission is "resource:Action", for example "charges:List". The action
// "All" grants every action on the resource ("reports:All").
// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9_.-]*:[A-Za-z0-9][A-Za-z0-9_.-]*$`
// +kubebuilder:validation:MaxLength=128
type Permission string

// CIDR is an IPv4 or IPv6 block in CIDR notation, such as 185.184.111.39/32.
// +kubebuilder:validation:MaxLength=49
// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be a CIDR block such as 10.0.0.0/8 or 2001:db8::/32"
type CIDR string

// URLPath is an absolute request path. A trailing "/*" matches every path below it.
// +kubebuilder:validation:MaxLength=512
// +kubebuilder:validation:Pattern=`^/[^\s?#]*$`
type URLPath string
