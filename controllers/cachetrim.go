package controllers

import (
	"encoding/binary"
	"hash/maphash"
	"maps"
	"slices"
	"strings"
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
//
// The transform may be given an object it already transformed: client-go's
// watch-list (every informer's initial list, so every start of the manager)
// transforms each object into a store of its own and then hands that store
// to the informer's queue, whose Replace transforms it again. A credentials
// Secret already folded is therefore left as it is: trimmed again, its
// shared labels map became a copy of its own, which at 100,000 keys kept
// 31 MB more live after every restart (make bench-scale, "Restarting the
// manager").
func trimForCache(obj any) (any, error) {
	if s, ok := obj.(*corev1.Secret); ok && isFolded(s) {
		return obj, nil
	}
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
	k.Spec.Permissions = sharedPermissions(k.Spec.Permissions)
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
	k.Status.Conditions = sharedConditions(k.Status.Conditions)
	k.Status.LastRotationTime = sharedTime(k.Status.LastRotationTime)
}

// Many cached ApiKeys hold equal permission lists, conditions (keys made
// Ready within the same second) and rotation times; at 100,000 keys these
// were some 12 MiB of copies (BenchmarkCacheLiveHeap: 872 -> 752 B a key). The cache's transform hands out one shared
// copy of each (shared, below). Cached objects are read only (controller-
// runtime's contract; every reconciler that changes an object changes a
// copy of its own, which a DeepCopy gives its own slices and pointers), so
// sharing changes no value anyone reads.
var (
	sharedPermissionLists = shared[[]keygatev1.Permission]{equal: slices.Equal[[]keygatev1.Permission]}
	sharedConditionLists  = shared[[]metav1.Condition]{equal: func(a, b []metav1.Condition) bool {
		return slices.EqualFunc(a, b, func(x, y metav1.Condition) bool { return x == y })
	}}
	sharedTimes = shared[*metav1.Time]{equal: func(a, b *metav1.Time) bool { return *a == *b }}
)

func sharedPermissions(ps []keygatev1.Permission) []keygatev1.Permission {
	if len(ps) == 0 {
		return ps
	}
	var h maphash.Hash
	h.SetSeed(sharedSeed)
	for _, p := range ps {
		maphash.WriteComparable(&h, p) // a collision only shares nothing (shared.get)
	}
	return sharedPermissionLists.get(h.Sum64(), ps)
}

func sharedConditions(cs []metav1.Condition) []metav1.Condition {
	if len(cs) == 0 {
		return cs
	}
	var h maphash.Hash
	h.SetSeed(sharedSeed)
	for _, c := range cs {
		for _, f := range []string{c.Type, string(c.Status), c.Reason, c.Message} {
			maphash.WriteComparable(&h, f)
		}
		maphash.WriteComparable(&h, c.ObservedGeneration)
		maphash.WriteComparable(&h, c.LastTransitionTime.UnixNano())
		maphash.WriteComparable(&h, c.LastTransitionTime.Location())
	}
	return sharedConditionLists.get(h.Sum64(), cs)
}

func sharedTime(t *metav1.Time) *metav1.Time {
	if t == nil {
		return nil
	}
	var h maphash.Hash
	h.SetSeed(sharedSeed)
	maphash.WriteComparable(&h, t.UnixNano())
	maphash.WriteComparable(&h, t.Location())
	return sharedTimes.get(h.Sum64(), t)
}

var sharedSeed = maphash.MakeSeed()

// shared hands out one value per hash: the first one it was given, when
// equal to the one asked about (a hash collision shares nothing), kept
// until it holds maxShared values, when it starts afresh (values handed out
// stay valid; only later ones stop sharing with them).
type shared[T any] struct {
	equal func(a, b T) bool
	mu    sync.Mutex
	m     map[uint64]T
}

const maxShared = 1 << 14

func (s *shared[T]) get(hash uint64, v T) T {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.m[hash]; ok {
		if s.equal(old, v) {
			return old
		}
		return v
	}
	if s.m == nil || len(s.m) >= maxShared {
		s.m = map[uint64]T{}
	}
	s.m[hash] = v
	return v
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

// A credentials Secret is cached folded: its annotations and data entries
// are packed into one string, kept in its GenerateName behind a NUL byte
// (the API server sets a generateName only on an object created with one,
// and never with a NUL byte; the Secret's own, if any, is packed too), and
// its Annotations and Data maps are dropped; the authorization entry, when
// it is the one its key ID and secret make, is kept as a mark only. Its
// labels, when they are the three keygate writes (managed by keygate, its
// policy, its ApiKey, the Secret's controller), are a map shared by every
// such Secret of the policy, the ApiKey's name replaced by a mark
// (credentialsKeyName reads it). At 100,000 keys the three maps and their
// many small strings were more than half of each cached credentials Secret
// (a Go map of up to 8 entries takes some 300 bytes however few it holds).
// Readers of a cached credentials Secret go through credentialsData,
// credentialsAnnotation and credentialsKeyName (read only) or
// unfoldCredentials (a copy of one's own, before anything is compared or
// written), which give back exactly what the API server holds.
const foldedMark = "\x00"

// ownerNameMark is the value of a folded Secret's shared
// keygate.dev/apikey label: the name of the ApiKey that controls it.
const ownerNameMark = "\x00owner"

// Records of a packed credentials Secret: a tag, then (but for
// foldDerivedAuth) the key, as one byte indexing foldKnownKeys or as a
// length and the key, and the value as a length and the value (lengths are
// uvarints).
const (
	foldAnnotation      = 'a' // an annotation, literal key
	foldAnnotationKnown = 'A' // an annotation, known key
	foldData            = 'd' // a data entry, literal key
	foldDataKnown       = 'D' // a data entry, known key
	foldDerivedAuth     = '=' // the authorization is the one key ID and secret make
	foldGenerateName    = 'g' // the Secret's own generateName: a length and the value
)

// foldKnownKeys are the keys a credentials Secret always has, packed as
// their index.
var foldKnownKeys = []string{annotationSecretVersion, annotationRotatedAt, annotationChecksum, annotationRotateHandled,
	annotationPreviousDigest, annotationPreviousVersion, annotationPreviousExpiresAt, annotationPreviousHashKey,
	CredentialsKeyID, CredentialsSecret, CredentialsAuthorization}

// isCredentialsSecret tells a credentials Secret by its labels.
func isCredentialsSecret(s *corev1.Secret) bool {
	return s.Labels[keygatev1.LabelManagedBy] == keygatev1.ManagedByValue && s.Labels[keygatev1.LabelApiKey] != ""
}

// foldCredentials folds the annotations and data of a credentials Secret
// into its GenerateName, and shares its labels (see foldedMark); other
// Secrets are left alone.
func foldCredentials(s *corev1.Secret) {
	if !isCredentialsSecret(s) || len(s.Data) == 0 || isFolded(s) {
		return
	}
	derived := basicAuthorization(string(s.Data[CredentialsKeyID]), string(s.Data[CredentialsSecret]))
	size := len(foldedMark) + len(s.GenerateName) + binary.MaxVarintLen64 + 1
	for k, v := range s.Annotations {
		size += len(k) + len(v) + 2*binary.MaxVarintLen64 + 1
	}
	for k, v := range s.Data {
		size += len(k) + len(v) + 2*binary.MaxVarintLen64 + 1
	}
	packed := make([]byte, 0, size)
	packed = append(packed, foldedMark...)
	if s.GenerateName != "" {
		packed = append(packed, foldGenerateName)
		packed = binary.AppendUvarint(packed, uint64(len(s.GenerateName)))
		packed = append(packed, s.GenerateName...)
	}
	put := func(literal, known byte, k, v string) {
		if i := slices.Index(foldKnownKeys, k); i >= 0 {
			packed = append(packed, known, byte(i)) //nolint:gosec // i < len(foldKnownKeys), a dozen
		} else {
			packed = append(packed, literal)
			packed = binary.AppendUvarint(packed, uint64(len(k)))
			packed = append(packed, k...)
		}
		packed = binary.AppendUvarint(packed, uint64(len(v)))
		packed = append(packed, v...)
	}
	for k, v := range s.Annotations {
		put(foldAnnotation, foldAnnotationKnown, k, v)
	}
	for k, v := range s.Data {
		if k == CredentialsAuthorization && string(v) == derived {
			packed = append(packed, foldDerivedAuth)
			continue
		}
		put(foldData, foldDataKnown, k, string(v))
	}
	if labels := sharedCredentialsLabels(s); labels != nil {
		s.Labels = labels
	}
	s.GenerateName, s.Annotations, s.Data = string(packed), nil, nil
}

// sharedCredentialsLabelMaps holds the labels shared by folded Secrets.
var sharedCredentialsLabelMaps = shared[map[string]string]{equal: maps.Equal[map[string]string, map[string]string]}

// sharedCredentialsLabels is the shared labels map of credentials Secret s
// (see foldedMark); nil when its labels are not the three keygate writes.
func sharedCredentialsLabels(s *corev1.Secret) map[string]string {
	owner := metav1.GetControllerOfNoCopy(s)
	policy := s.Labels[keygatev1.LabelTokenPolicy]
	if len(s.Labels) != 3 || owner == nil || policy == "" || s.Labels[keygatev1.LabelApiKey] != owner.Name ||
		s.Labels[keygatev1.LabelManagedBy] != keygatev1.ManagedByValue {
		return nil
	}
	labels := map[string]string{keygatev1.LabelManagedBy: keygatev1.ManagedByValue,
		keygatev1.LabelTokenPolicy: interned.intern(policy), keygatev1.LabelApiKey: ownerNameMark}
	return sharedCredentialsLabelMaps.get(maphash.Comparable(sharedSeed, policy), labels)
}

// credentialsKeyName is the keygate.dev/apikey label of a Secret, folded
// or not.
func credentialsKeyName(o metav1.Object) string {
	v := o.GetLabels()[keygatev1.LabelApiKey]
	if v == ownerNameMark {
		if owner := metav1.GetControllerOfNoCopy(o); owner != nil {
			return owner.Name
		}
		return ""
	}
	return v
}

// isFolded tells a Secret folded by foldCredentials.
func isFolded(s *corev1.Secret) bool {
	return strings.HasPrefix(s.GenerateName, foldedMark)
}

// eachFolded calls f with each record of packed (tag foldAnnotation or
// foldData with its key and value, foldGenerateName with its value, or
// foldDerivedAuth) until f returns
// false. The key and value share packed's bytes. A malformed record (only a
// changed cache could make one) ends the walk.
func eachFolded(packed string, f func(tag byte, k, v string) bool) {
	str := func(p string) (string, string, bool) {
		var n uint64
		for w := 0; w < len(p) && w < binary.MaxVarintLen64; w++ {
			n |= uint64(p[w]&0x7f) << (7 * w)
			if p[w] < 0x80 {
				if rest := p[w+1:]; uint64(len(rest)) >= n {
					return rest[:n], rest[n:], true
				}
				break
			}
		}
		return "", "", false
	}
	for p := packed; len(p) > 0; {
		tag := p[0]
		p = p[1:]
		var k, v string
		var ok bool
		switch tag {
		case foldDerivedAuth:
			if !f(tag, CredentialsAuthorization, "") {
				return
			}
			continue
		case foldGenerateName:
		case foldAnnotationKnown, foldDataKnown:
			if len(p) == 0 || int(p[0]) >= len(foldKnownKeys) {
				return
			}
			k, p = foldKnownKeys[p[0]], p[1:]
			if tag == foldAnnotationKnown {
				tag = foldAnnotation
			} else {
				tag = foldData
			}
		case foldAnnotation, foldData:
			if k, p, ok = str(p); !ok {
				return
			}
		default:
			return
		}
		if v, p, ok = str(p); !ok || !f(tag, k, v) {
			return
		}
	}
}

// foldedValue is the record of tag (foldAnnotation or foldData) and key k
// of a folded Secret.
func foldedValue(s *corev1.Secret, tag byte, k string) (v string, found bool) {
	if !isFolded(s) {
		return "", false
	}
	packed := s.GenerateName[len(foldedMark):]
	derived := false
	eachFolded(packed, func(t byte, key, val string) bool {
		switch {
		case t == foldDerivedAuth:
			derived = true
		case t == tag && key == k:
			v, found = val, true
			return false
		}
		return true
	})
	if !found && derived && tag == foldData && k == CredentialsAuthorization {
		id, _ := foldedValue(s, foldData, CredentialsKeyID)
		secret, _ := foldedValue(s, foldData, CredentialsSecret)
		return basicAuthorization(id, secret), true
	}
	return v, found
}

// credentialsData is the data entry k of a credentials Secret, folded or
// not, without copying or changing s.
func credentialsData(s *corev1.Secret, k string) string {
	if v, ok := s.Data[k]; ok {
		return string(v)
	}
	v, _ := foldedValue(s, foldData, k)
	return v
}

// credentialsAnnotation is the annotation k of a credentials Secret, folded
// or not, without copying or changing s.
func credentialsAnnotation(s *corev1.Secret, k string) string {
	if !isFolded(s) {
		return s.Annotations[k]
	}
	v, _ := foldedValue(s, foldAnnotation, k)
	return v
}

// unfoldCredentials turns a folded Secret s, which must be the caller's own
// copy (a cache read without UnsafeDisableDeepCopy), back into the form the
// API server holds; a Secret not folded is left as it is.
func unfoldCredentials(s *corev1.Secret) {
	if s == nil || !isFolded(s) {
		return
	}
	packed := s.GenerateName[len(foldedMark):]
	labels := make(map[string]string, len(s.Labels))
	for k, v := range s.Labels {
		if k == keygatev1.LabelApiKey && v == ownerNameMark {
			v = credentialsKeyName(s)
		}
		labels[k] = v
	}
	data := map[string][]byte{}
	annotations := map[string]string{}
	generateName, derived := "", false
	eachFolded(packed, func(tag byte, k, v string) bool {
		switch tag {
		case foldDerivedAuth:
			derived = true
		case foldGenerateName:
			generateName = v
		case foldAnnotation:
			annotations[k] = v
		case foldData:
			data[k] = []byte(v)
		}
		return true
	})
	if derived {
		data[CredentialsAuthorization] = []byte(basicAuthorization(string(data[CredentialsKeyID]), string(data[CredentialsSecret])))
	}
	if len(annotations) == 0 {
		annotations = nil
	}
	s.Labels, s.GenerateName, s.Annotations, s.Data = labels, generateName, annotations, data
}
