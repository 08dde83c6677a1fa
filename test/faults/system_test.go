package faults

import (
	"fmt"
	"net/http"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// key is one ApiKey's credentials.
type key struct {
	name, id, secret string
	version          int64
}

func (k key) basic() string { return basic(k.id, k.secret) }

// system is one policy with its keys and three sidecars A, B and C.
type system struct {
	policy   string
	keys     []key
	sidecars []*sidecar
}

// newSystem creates policy with n keys (spec applied to each) and starts
// three sidecars for it, each accepting every key.
func newSystem(t *testing.T, policy string, n int, spec keygatev1.ApiKeySpec) *system {
	t.Helper()
	createPolicy(t, policy, keygatev1.TokenPolicySpec{})
	s := &system{policy: policy}
	for i := range n {
		name := fmt.Sprintf("%s-key-%d", policy, i)
		sp := spec
		sp.PolicyRef.Name = policy
		must(t, env.k8s.Create(t.Context(), &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: sp}))
		s.keys = append(s.keys, key{name: name})
	}
	for i := range s.keys {
		name := s.keys[i].name
		eventually(t, operatorTimeout, "credentials of "+name, func() bool {
			k, err := readKey(t, name)
			if err == nil {
				s.keys[i] = k
			}
			return err == nil && k.version >= 1
		})
	}
	for _, name := range []string{"a", "b", "c"} {
		s.sidecars = append(s.sidecars, startSidecar(t, policy+"-"+name, policy))
	}
	for _, sc := range s.sidecars {
		for _, k := range s.keys {
			eventually(t, operatorTimeout, sc.name+" accepts "+k.name, func() bool { return get(sc, k.basic()) == http.StatusOK })
		}
	}
	return s
}

// readKey reads an ApiKey's credentials Secret and secret version.
func readKey(t *testing.T, name string) (key, error) {
	ak := &keygatev1.ApiKey{}
	if err := env.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, ak); err != nil {
		return key{}, err
	}
	sec := &corev1.Secret{}
	if err := env.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name + "-credentials"}, sec); err != nil {
		return key{}, err
	}
	return key{name: name, id: string(sec.Data["key"]), secret: string(sec.Data["secret"]), version: ak.Status.SecretVersion}, nil
}

func objectMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}
