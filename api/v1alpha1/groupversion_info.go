// Package v1alpha1 contains the keygate.dev/v1alpha1 API: ApiKey and TokenPolicy.
// +kubebuilder:object:generate=true
// +groupName=keygate.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of keygate's objects.
	GroupVersion = schema.GroupVersion{Group: "keygate.dev", Version: "v1alpha1"}

	// SchemeBuilder adds the Go types to a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &ApiKey{}, &ApiKeyList{}, &TokenPolicy{}, &TokenPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
