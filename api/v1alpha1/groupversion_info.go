// Package v1alpha1 contains the keygate.dev/v1alpha1 API: ApiKey and TokenPolicy.
// +kubebuilder:object:generate=true
// +groupName=keygate.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of keygate's objects.
	GroupVersion = schema.GroupVersion{Group: "keygate.dev", Version: "v1alpha1"}

	// SchemeBuilder adds the Go types to the GroupVersionKind scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
