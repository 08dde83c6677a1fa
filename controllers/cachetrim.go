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
		if isCredentialsSecret(o) {
			foldCredentials(o)
		} else if len(o.Data) > 0 {
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

// A credentials Secret is cached folded: its data entries are kept in its
// annotations map, under keys no API object can have (they start with a NUL
// byte, which annotation keys cannot hold), and its Data map is dropped; the
// authorization entry, when it is the one its key ID and secret make, is
// kept as a mark only. At 100,000 keys the Data map and the authorization
// were a quarter of each cached credentials Secret. Readers of a cached
// credentials Secret go through credentialsData (read only) or
// unfoldCredentials (a copy of one's own, before anything is compared or
// written), which give back exactly what the API server holds.
const (
	foldedDataPrefix     = "\x00data/"
	foldedDerivedAuthKey = "\x00data-derived/" + CredentialsAuthorization
)

// isCredentialsSecret tells a credentials Secret by its labels.
func isCredentialsSecret(s *corev1.Secret) bool {
	return s.Labels[keygatev1.LabelManagedBy] == keygatev1.ManagedByValue && s.Labels[keygatev1.LabelApiKey] != ""
}

// foldCredentials folds the data of a credentials Secret into its
// annotations (see foldedDataPrefix); other Secrets are left alone.
func foldCredentials(s *corev1.Secret) {
	if !isCredentialsSecret(s) || len(s.Data) == 0 || isFolded(s) {
		return
	}
	annotations := make(map[string]string, len(s.Annotations)+len(s.Data))
	for k, v := range s.Annotations {
		annotations[interned.intern(k)] = v
	}
	derived := basicAuthorization(string(s.Data[CredentialsKeyID]), string(s.Data[CredentialsSecret]))
	for k, v := range s.Data {
		if k == CredentialsAuthorization && string(v) == derived {
			annotations[foldedDerivedAuthKey] = ""
			continue
		}
		annotations[interned.intern(foldedDataPrefix+k)] = string(v)
	}
	s.Annotations, s.Data = annotations, nil
}

// isFolded tells a Secret folded by foldCredentials.
func isFolded(s *corev1.Secret) bool {
	if _, ok := s.Annotations[foldedDerivedAuthKey]; ok {
		return true
	}
	for k := range s.Annotations {
		if len(k) > 0 && k[0] == 0 {
			return true
		}
	}
	return false
}

// credentialsData is the data entry k of a credentials Secret, folded or
// not, without copying or changing s.
func credentialsData(s *corev1.Secret, k string) string {
	if v, ok := s.Data[k]; ok {
		return string(v)
	}
	if v, ok := s.Annotations[foldedDataPrefix+k]; ok {
		return v
	}
	if _, ok := s.Annotations[foldedDerivedAuthKey]; ok && k == CredentialsAuthorization {
		return basicAuthorization(credentialsData(s, CredentialsKeyID), credentialsData(s, CredentialsSecret))
	}
	return ""
}

// unfoldCredentials turns a folded Secret s, which must be the caller's own
// copy (a cache read without UnsafeDisableDeepCopy), back into the form the
// API server holds; a Secret not folded is left as it is.
func unfoldCredentials(s *corev1.Secret) {
	if s == nil || !isFolded(s) {
		return
	}
	data := map[string][]byte{}
	annotations := map[string]string{}
	for k, v := range s.Annotations {
		switch {
		case k == foldedDerivedAuthKey:
		case len(k) > len(foldedDataPrefix) && k[:len(foldedDataPrefix)] == foldedDataPrefix:
			data[k[len(foldedDataPrefix):]] = []byte(v)
		default:
			annotations[k] = v
		}
	}
	if _, ok := s.Annotations[foldedDerivedAuthKey]; ok {
		data[CredentialsAuthorization] = []byte(basicAuthorization(string(data[CredentialsKeyID]), string(data[CredentialsSecret])))
	}
	if len(annotations) == 0 {
		annotations = nil
	}
	s.Annotations, s.Data = annotations, data
}
