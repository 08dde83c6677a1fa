package controllers

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// lastAppliedAnnotation is kubectl apply's copy of the whole object as last
// applied: on an ApiKey it repeats its spec, and nothing in keygate reads it.
const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// trimForCache is the cache's transform: what the informers keep of each
// object. Every decoded object holds its own copy of every string; at
// 100,000 keys (make bench-scale) the cached ApiKeys and credentials Secrets
// were most of the manager's heap, and much of them the same few strings
// again and again (label, annotation and data keys, the namespace, the
// policy's name, a condition's type, status, reason and message). Those are
// shared (interned) here, which changes no value. Removed are only fields no
// reconciler reads and no write sends back: managedFields (a write that
// leaves them out keeps them on the server) and an ApiKey's
// last-applied-configuration annotation (ApiKeys are only ever status
// patched, from the difference of two copies, so an annotation absent from
// both is left alone on the server).
func trimForCache(obj any) (any, error) {
	strip := cache.TransformStripManagedFields()
	obj, err := strip(obj)
	if err != nil {
		return obj, err
	}
	switch o := obj.(type) {
	case *keygatev1.ApiKey:
		trimApiKey(o)
	case *corev1.Secret:
		trimMeta(&o.ObjectMeta)
		if len(o.Data) > 0 {
			data := make(map[string][]byte, len(o.Data))
			for k, v := range o.Data {
				data[interned.intern(k)] = v
			}
			o.Data = data
		}
	case *corev1.ConfigMap:
		trimMeta(&o.ObjectMeta)
	case *keygatev1.TokenPolicy:
		trimMeta(&o.ObjectMeta)
	}
	return obj, nil
}

func trimApiKey(k *keygatev1.ApiKey) {
	delete(k.Annotations, lastAppliedAnnotation)
	trimMeta(&k.ObjectMeta)
	k.APIVersion, k.Kind = interned.intern(k.APIVersion), interned.intern(k.Kind)
	k.Spec.PolicyRef.Name = interned.intern(k.Spec.PolicyRef.Name)
	for i, p := range k.Spec.Permissions {
		k.Spec.Permissions[i] = keygatev1.Permission(interned.intern(string(p)))
	}
	for i := range k.Spec.Clients {
		for j, p := range k.Spec.Clients[i].Permissions {
			k.Spec.Clients[i].Permissions[j] = keygatev1.Permission(interned.intern(string(p)))
		}
	}
	for i := range k.Status.Conditions {
		c := &k.Status.Conditions[i]
		c.Type, c.Reason, c.Message = interned.intern(c.Type), interned.intern(c.Reason), interned.intern(c.Message)
		c.Status = metav1.ConditionStatus(interned.intern(string(c.Status)))
	}
}

// trimMeta shares the namespace, the label, annotation and owner strings
// many objects repeat. The maps are made anew (a map is never shared
// between two objects); a label value equal to the controller's name (a
// credentials Secret's keygate.dev/apikey) shares that string.
func trimMeta(m *metav1.ObjectMeta) {
	m.Namespace = interned.intern(m.Namespace)
	for i := range m.OwnerReferences {
		r := &m.OwnerReferences[i]
		r.APIVersion, r.Kind = interned.intern(r.APIVersion), interned.intern(r.Kind)
	}
	if len(m.Labels) > 0 {
		labels := make(map[string]string, len(m.Labels))
		for k, v := range m.Labels {
			switch k {
			case keygatev1.LabelApiKey:
				if len(m.OwnerReferences) > 0 && m.OwnerReferences[0].Name == v {
					v = m.OwnerReferences[0].Name
				}
			case bundle.LabelShard:
			default:
				v = interned.intern(v)
			}
			labels[interned.intern(k)] = v
		}
		m.Labels = labels
	}
	if len(m.Annotations) > 0 {
		annotations := make(map[string]string, len(m.Annotations))
		for k, v := range m.Annotations {
			annotations[interned.intern(k)] = v
		}
		m.Annotations = annotations
	}
}

// interner hands out one copy of each string it was given, up to a bound
// (maxInterned strings of at most maxInternedLen bytes; past it strings are
// returned as they are), so that it cannot grow without limit whatever the
// cluster holds.
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

const (
	maxInterned    = 1 << 14
	maxInternedLen = 512
)

// interned is the interner of the cache's transform.
var interned interner

func (in *interner) intern(s string) string {
	if s == "" || len(s) > maxInternedLen {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[s]; ok {
		return v
	}
	if len(in.m) >= maxInterned {
		return s
	}
	if in.m == nil {
		in.m = map[string]string{}
	}
	in.m[s] = s
	return s
}
