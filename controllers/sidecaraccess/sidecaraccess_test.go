package sidecaraccess

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func injectedPod(args ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: map[string]string{"a": "b"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web-sa",
			InitContainers: []corev1.Container{
				{Name: SidecarContainerName, Image: "keygate/sidecar:v0.1.0", Args: args},
				{Name: "migrate", Image: "busybox"},
			},
			Containers: []corev1.Container{{Name: "app", Image: "app", Env: []corev1.EnvVar{{Name: "X", Value: "y"}}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Message: "m"},
	}
}

func TestSidecarPolicy(t *testing.T) {
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"injected", injectedPod("--policy=payments-api", "--upstream-port=8080"), "payments-api"},
		{"no policy argument", injectedPod("--upstream-port=8080"), ""},
		{"no sidecar", &corev1.Pod{Spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "migrate", Args: []string{"--policy=x"}}}}}, ""},
		{"a main container named like the sidecar does not count", &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: SidecarContainerName, Args: []string{"--policy=x"}}}}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sidecarPolicy(tt.pod); got != tt.want {
				t.Errorf("sidecarPolicy = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStripPodKeepsWhatIsRead(t *testing.T) {
	got, err := stripPod(injectedPod("--policy=payments-api"))
	if err != nil {
		t.Fatal(err)
	}
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: map[string]string{"a": "b"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web-sa",
			InitContainers:     []corev1.Container{{Name: SidecarContainerName, Args: []string{"--policy=payments-api"}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stripPod =\n%#v\nwant\n%#v", got, want)
	}
}

func TestRulesNameOnlyThePolicysObjects(t *testing.T) {
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"keygate-billing"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"keygate-billing-revocations"}, Verbs: []string{"get", "list", "watch", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"keygate-billing-usage"}, Verbs: []string{"patch"}},
	}
	if got := Rules("billing"); !reflect.DeepEqual(got, want) {
		t.Errorf("Rules = %#v", got)
	}
	if RoleName("billing") != "keygate-billing-sidecar" {
		t.Errorf("RoleName = %q", RoleName("billing"))
	}
}
