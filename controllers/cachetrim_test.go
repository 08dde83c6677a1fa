package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// cachedSample is an ApiKey and its credentials Secret as the API server
// sends them (managedFields, owner, conditions, kubectl's annotation).
func cachedSample(i int) (*keygatev1.ApiKey, *corev1.Secret) {
	now := metav1.NewTime(time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC))
	key := &keygatev1.ApiKey{
		TypeMeta: metav1.TypeMeta{APIVersion: keygatev1.GroupVersion.String(), Kind: "ApiKey"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: fmt.Sprintf("key-%06d", i), UID: types.UID(fmt.Sprintf("uid-key-%d", i)),
			ResourceVersion: fmt.Sprint(1000 + i), Generation: 1, CreationTimestamp: now,
			Annotations:   map[string]string{lastAppliedAnnotation: `{"spec":{}}`, keygatev1.AnnotationRotate: "r1"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply, Time: &now}}},
		Spec: keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: "p"}, Permissions: []keygatev1.Permission{"charges:List", "reports:All"},
			Clients: []keygatev1.ApiKeyClient{{Key: "mobile", Permissions: []keygatev1.Permission{"charges:List"}}}},
	}
	c := credentials{KeyID: fmt.Sprintf("apk-%020d", i), Secret: fmt.Sprintf("%043d", i), Version: 2, RotatedAt: now.Time, Intact: true,
		Previous: &previousSecret{Digest: make([]byte, 32), Version: 1, ExpiresAt: now.Add(time.Hour), HashKeyID: "0123456789abcdef"}}
	key.Status = keygatev1.ApiKeyStatus{KeyID: c.KeyID, SecretName: key.Name + "-credentials", SecretVersion: 2, LastRotationTime: &now, ObservedGeneration: 1}
	meta.SetStatusCondition(&key.Status.Conditions, metav1.Condition{Type: keygatev1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: keygatev1.ReasonReady, Message: "in bundle Secret keygate-p-3", ObservedGeneration: 1})
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: key.Status.SecretName, UID: types.UID(fmt.Sprintf("uid-secret-%d", i)),
		ResourceVersion: fmt.Sprint(2000 + i), CreationTimestamp: now,
		Labels:        map[string]string{keygatev1.LabelManagedBy: keygatev1.ManagedByValue, keygatev1.LabelApiKey: key.Name, keygatev1.LabelTokenPolicy: "p"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "keygate", Operation: metav1.ManagedFieldsOperationUpdate, Time: &now}}}}
	writeCredentials(s, c)
	s.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(key, keygatev1.GroupVersion.WithKind("ApiKey"))}
	return key, s
}

// The cache's transform changes no value a reconciler reads or writes back:
// only managedFields and kubectl's last-applied-configuration go, and no
// map is shared between two cached objects.
func TestTrimForCacheKeepsEveryValue(t *testing.T) {
	g := NewWithT(t)
	key, secret := cachedSample(1)
	wantKey, wantSecret := key.DeepCopy(), secret.DeepCopy()
	wantKey.ManagedFields, wantSecret.ManagedFields = nil, nil
	delete(wantKey.Annotations, lastAppliedAnnotation)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "usage", Labels: map[string]string{"a": "b"}}, Data: map[string]string{"k": "v"}}
	wantCM := cm.DeepCopy()

	for _, c := range []struct{ got, want client.Object }{{key, wantKey}, {secret, wantSecret}, {cm, wantCM}} {
		out, err := trimForCache(c.got)
		g.Expect(err).NotTo(HaveOccurred())
		if s, ok := out.(*corev1.Secret); ok {
			g.Expect(s.Data).To(BeNil(), "a credentials Secret is cached folded")
			g.Expect(readCredentials(s)).To(Equal(readCredentials(wantSecret)))
			s = s.DeepCopy()
			unfoldCredentials(s)
			out = s
		}
		g.Expect(equality.Semantic.DeepEqual(out, c.want)).To(BeTrue(), "%T changed beyond managedFields and last-applied: %v", c.got, out)
	}

	// Two credentials Secrets trimmed share their labels (read only); a
	// copy made to be changed (as a Get hands out) has its own.
	_, other := cachedSample(2)
	o, err := trimForCache(other)
	g.Expect(err).NotTo(HaveOccurred())
	other = o.(*corev1.Secret)
	g.Expect(reflect.ValueOf(other.Labels).UnsafePointer()).To(Equal(reflect.ValueOf(secret.Labels).UnsafePointer()), "shared labels")
	g.Expect(credentialsKeyName(other)).To(Equal("key-000002"))
	g.Expect(credentialsKeyName(secret)).To(Equal("key-000001"))
	mine := other.DeepCopy()
	mine.Labels["x"] = "y"
	g.Expect(secret.Labels).NotTo(HaveKey("x"))
	g.Expect(secret.Annotations).To(BeNil(), "a credentials Secret's annotations are folded too")
}

// The transform applied twice to the same objects, as client-go's watch-list
// does on every informer's initial list (the reflector's store, then the
// queue's Replace), leaves them as once: a credentials Secret keeps its
// shared labels map (a restart of the manager at 100,000 keys otherwise
// kept a map per Secret, 31 MB) and reads the same; an ApiKey keeps its
// shared values.
func TestTrimForCacheTwiceIsOnce(t *testing.T) {
	g := NewWithT(t)
	twice := func(o client.Object) client.Object {
		once, err := trimForCache(o.DeepCopyObject()) // the transform changes what it is given
		g.Expect(err).NotTo(HaveOccurred())
		again, err := trimForCache(once)
		g.Expect(err).NotTo(HaveOccurred())
		return again.(client.Object)
	}
	key1, secret1 := cachedSample(1)
	key2, secret2 := cachedSample(2)
	key1, key2 = serverCopy(t, key1), serverCopy(t, key2) // condition times in seconds, as the API server sends them
	s1, s2 := twice(secret1).(*corev1.Secret), twice(secret2).(*corev1.Secret)
	g.Expect(reflect.ValueOf(s2.Labels).UnsafePointer()).To(Equal(reflect.ValueOf(s1.Labels).UnsafePointer()), "shared labels")
	g.Expect(credentialsKeyName(s1)).To(Equal(key1.Name))
	g.Expect(readCredentials(s1)).To(Equal(readCredentials(secret1)))
	unfolded := s1.DeepCopy()
	unfoldCredentials(unfolded)
	want := secret1.DeepCopy()
	want.ManagedFields = nil
	g.Expect(equality.Semantic.DeepEqual(unfolded, want)).To(BeTrue(), "the Secret as the API server holds it: %v", unfolded)

	k1, k2 := twice(key1).(*keygatev1.ApiKey), twice(key2).(*keygatev1.ApiKey)
	g.Expect(&k2.Spec.Permissions[0]).To(BeIdenticalTo(&k1.Spec.Permissions[0]))
	g.Expect(&k2.Status.Conditions[0]).To(BeIdenticalTo(&k1.Status.Conditions[0]))
	g.Expect(k1.ManagedFields).To(BeNil())
	g.Expect(k1.Annotations).NotTo(HaveKey(lastAppliedAnnotation))
}

// Folding a credentials Secret for the cache loses nothing, whatever a hand
// edit left in it: unfolded, it is the Secret the API server holds, and its
// data reads the same folded or not.
func TestFoldedCredentialsUnfoldExactly(t *testing.T) {
	g := NewWithT(t)
	variants := map[string]func(*corev1.Secret){
		"as written":               func(*corev1.Secret) {},
		"authorization edited":     func(s *corev1.Secret) { s.Data[CredentialsAuthorization] = []byte("Basic edited") },
		"authorization removed":    func(s *corev1.Secret) { delete(s.Data, CredentialsAuthorization) },
		"an entry added":           func(s *corev1.Secret) { s.Data["note"] = []byte("hand-made") },
		"empty value":              func(s *corev1.Secret) { s.Data[CredentialsSecret] = []byte{} },
		"no annotations":           func(s *corev1.Secret) { s.Annotations = nil },
		"not a credentials Secret": func(s *corev1.Secret) { delete(s.Labels, keygatev1.LabelApiKey) },
		"no data":                  func(s *corev1.Secret) { s.Data = nil },
		"annotations added": func(s *corev1.Secret) {
			s.Annotations["example.com/long"] = strings.Repeat("ü", 300) // lengths past one varint byte
			s.Annotations["example.com/empty"] = ""
		},
		"a label added":        func(s *corev1.Secret) { s.Labels["team"] = "payments" },
		"another ApiKey label": func(s *corev1.Secret) { s.Labels[keygatev1.LabelApiKey] = "someone-else" },
		"no controller":        func(s *corev1.Secret) { s.OwnerReferences[0].Controller = nil },
		"a generateName":       func(s *corev1.Secret) { s.GenerateName = "key-" },
	}
	for name, edit := range variants {
		_, server := cachedSample(3)
		server.ManagedFields = nil
		edit(server)
		cached := server.DeepCopy()
		foldCredentials(cached)
		if isCredentialsSecret(server) && len(server.Data) > 0 {
			g.Expect(cached.Data).To(BeNil(), name)
		}
		for _, k := range []string{CredentialsKeyID, CredentialsSecret, CredentialsAuthorization, "note"} {
			g.Expect(credentialsData(cached, k)).To(Equal(string(server.Data[k])), "%s: data %q", name, k)
		}
		for k, v := range server.Annotations {
			g.Expect(credentialsAnnotation(cached, k)).To(Equal(v), "%s: annotation %q", name, k)
		}
		g.Expect(credentialsAnnotation(cached, "example.com/absent")).To(BeEmpty(), name)
		g.Expect(credentialsKeyName(cached)).To(Equal(server.Labels[keygatev1.LabelApiKey]), name)
		g.Expect(isCredentialsSecret(cached)).To(Equal(isCredentialsSecret(server)), name)
		g.Expect(readCredentials(cached)).To(Equal(readCredentials(server)), name)
		unfoldCredentials(cached)
		g.Expect(equality.Semantic.DeepEqual(cached, server)).To(BeTrue(), "%s: unfolded %v, want %v", name, cached, server)
	}
}

// The interner shares equal strings and stops growing at its bound.
func TestInternerIsBounded(t *testing.T) {
	g := NewWithT(t)
	var in interner
	a := in.intern(string([]byte("keygate")))
	b := in.intern(string([]byte("keygate")))
	g.Expect(a).To(Equal(b))
	g.Expect(stringData(a)).To(Equal(stringData(b)), "the same bytes")
	for i := range maxInterned + 10 {
		in.intern(fmt.Sprint("s", i))
	}
	g.Expect(in.m).To(HaveLen(maxInterned))
	long := string(make([]byte, maxInternedLen+1))
	g.Expect(in.intern(long)).To(Equal(long))
	g.Expect(in.m).NotTo(HaveKey(long))
}

// Writes made from trimmed cached copies lose nothing on the server: an
// ApiKey's last-applied-configuration stays through its status writes and a
// rotation, and its credentials Secret keeps every data entry and annotation
// (the rotation patches it from the cached copy).
func TestWritesFromTheTrimmedCacheLoseNothing(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	lastApplied := `{"apiVersion":"keygate.dev/v1alpha1","kind":"ApiKey","spec":{"policyRef":{"name":"p"}}}`
	k := newApiKey(ns, "k", "p", withRotation(0, time.Hour))
	k.Annotations = map[string]string{lastAppliedAnnotation: lastApplied}
	create(t, newPolicy(ns, "p"), k)
	waitReason(t, ns, "k", "True/Ready")
	c1, _ := getCreds(g, ns, "k-credentials")

	key := getApiKey(g, ns, "k")
	patch := client.MergeFrom(key.DeepCopy())
	key.Annotations[keygatev1.AnnotationRotate] = "now"
	g.Expect(k8sClient.Patch(context.Background(), key, patch)).To(Succeed())
	g.Eventually(func(g Gomega) int64 { return getApiKey(g, ns, "k").Status.SecretVersion }, timeout, interval).Should(BeEquivalentTo(2))
	c2, s := getCreds(g, ns, "k-credentials")
	waitDigests(t, ns, "p", c1.KeyID, c2.Secret, c1.Secret) // the passes after the rotation ran

	key = getApiKey(g, ns, "k")
	g.Expect(key.Annotations).To(HaveKeyWithValue(lastAppliedAnnotation, lastApplied))
	g.Expect(c2.KeyID).To(Equal(c1.KeyID))
	g.Expect(c2.Secret).NotTo(Equal(c1.Secret))
	g.Expect(c2.Authorization).To(Equal(basicAuthorization(c2.KeyID, c2.Secret)))
	got := readCredentials(s)
	g.Expect(got.Intact).To(BeTrue())
	g.Expect(got.Version).To(BeEquivalentTo(2))
	g.Expect(got.Previous).NotTo(BeNil(), "the previous secret's digest is kept for the grace period")
	g.Expect(s.Labels).To(HaveKeyWithValue(keygatev1.LabelApiKey, "k"))
	g.Expect(s.OwnerReferences).To(HaveLen(1))

	// A hand edit of the authorization alone is seen through the folded
	// cache and repaired.
	s.Data[CredentialsAuthorization] = []byte("Basic aGFuZDplZGl0")
	g.Expect(k8sClient.Update(context.Background(), s)).To(Succeed())
	g.Eventually(func(g Gomega) string {
		c, _ := getCreds(g, ns, "k-credentials")
		return c.Authorization
	}, timeout, interval).Should(Equal(basicAuthorization(c2.KeyID, c2.Secret)))
	c3, _ := getCreds(g, ns, "k-credentials")
	g.Expect(c3.Secret).To(Equal(c2.Secret), "the secret is kept")
}

func stringData(s string) *byte { return unsafe.StringData(s) }

// After a bundle Secret's update event, only the new version's parsed view
// is kept (the keys whose entry changed are queued from the comparison of
// the two first).
func TestBundleUpdateKeepsOneParsedVersion(t *testing.T) {
	g := NewWithT(t)
	shardSecret := func(rv string, secret string) *corev1.Secret {
		doc := bundle.Shard{Version: bundle.ShardFormatVersion, Count: 1, Index: 0, HashKeyID: bundle.HashKeyID(make([]byte, 32)),
			Keys: []bundle.Key{{Name: "k", KeyID: "apk-00000000000000000001", Secrets: []bundle.SecretDigest{{Digest: bundle.Digest(make([]byte, 32), secret), Version: 1}}}}}
		data, err := json.Marshal(doc)
		g.Expect(err).NotTo(HaveOccurred())
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: bundle.ShardName("p", 1, 0), ResourceVersion: rv,
			Labels: map[string]string{keygatev1.LabelManagedBy: keygatev1.ManagedByValue, keygatev1.LabelTokenPolicy: "p", bundle.LabelShard: "0"}},
			Data: map[string][]byte{bundle.SecretDataKey: data}}
	}
	r := &ApiKeyReconciler{}
	h := bundleHandler{r}
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
	defer q.ShutDown()
	old, cur := shardSecret("1", "a"), shardSecret("2", "b")
	g.Expect(r.bundles.get(old)).NotTo(BeNil(), "the shard parses")
	h.Update(context.Background(), event.TypedUpdateEvent[client.Object]{ObjectOld: old, ObjectNew: cur}, q)
	g.Expect(q.Len()).To(Equal(1), "the key whose digest changed is queued")
	pair := r.bundles.m[client.ObjectKeyFromObject(cur)]
	g.Expect(pair[0]).NotTo(BeNil())
	g.Expect(pair[0].resourceVersion).To(Equal("2"))
	g.Expect(pair[1]).To(BeNil(), "the version before is not kept")
}

// The credentials memo keeps digests, not secrets, and one hash key ID
// string for all its entries.
func TestCredsMemoKeepsNoSecret(t *testing.T) {
	g := NewWithT(t)
	hashKey := make([]byte, hashKeyLength)
	var m credsMemo
	policy := types.NamespacedName{Namespace: "team", Name: "p"}
	pass := m.begin(policy)
	for i := range 3 {
		_, s := cachedSample(i)
		want := readCredentials(s)
		c, digest := pass.read(s, hashKey)
		g.Expect(c.Secret).To(BeEmpty())
		g.Expect(c.KeyID).To(Equal(want.KeyID))
		g.Expect(c.Intact).To(BeTrue())
		g.Expect(digest).To(Equal(bundle.Digest(hashKey, want.Secret)))
	}
	m.end(policy, pass)
	var ids []*byte
	for _, e := range m.m[policy] {
		ids = append(ids, stringData(e.hashKeyID))
	}
	g.Expect(ids).To(HaveLen(3))
	g.Expect(ids[1]).To(BeIdenticalTo(ids[0]))
	g.Expect(ids[2]).To(BeIdenticalTo(ids[0]))
}

// Cached ApiKeys with equal permissions, conditions and rotation time share
// one copy of each; a copy made to be changed (DeepCopy, what a Get without
// UnsafeDisableDeepCopy hands out) has its own; a hash collision shares
// nothing.
func TestCachedApiKeysShareEqualValues(t *testing.T) {
	g := NewWithT(t)
	trimmed := func(i int) *keygatev1.ApiKey {
		k, _ := cachedSample(i)
		k = serverCopy(t, k)
		out, err := trimForCache(k)
		g.Expect(err).NotTo(HaveOccurred())
		return out.(*keygatev1.ApiKey)
	}
	a, b := trimmed(1), trimmed(2)
	g.Expect(&b.Spec.Permissions[0]).To(BeIdenticalTo(&a.Spec.Permissions[0]))
	g.Expect(&b.Status.Conditions[0]).To(BeIdenticalTo(&a.Status.Conditions[0]))
	g.Expect(b.Status.LastRotationTime).To(BeIdenticalTo(a.Status.LastRotationTime))

	c := b.DeepCopy()
	c.Spec.Permissions[0] = "changed:Own"
	c.Status.Conditions[0].Reason = "Changed"
	c.Status.LastRotationTime.Time = c.Status.LastRotationTime.Add(time.Hour)
	g.Expect(a.Spec.Permissions[0]).To(BeEquivalentTo("charges:List"))
	g.Expect(a.Status.Conditions[0].Reason).To(Equal(keygatev1.ReasonReady))

	later := trimmed(3)
	later.Status.Conditions[0].LastTransitionTime.Time = later.Status.Conditions[0].LastTransitionTime.Add(time.Second)
	later = serverCopy(t, later)
	out, err := trimForCache(later)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(&out.(*keygatev1.ApiKey).Status.Conditions[0]).NotTo(BeIdenticalTo(&a.Status.Conditions[0]), "another transition time")

	s := shared[string]{equal: func(x, y string) bool { return x == y }}
	g.Expect(s.get(7, "one")).To(Equal("one"))
	g.Expect(s.get(7, "two")).To(Equal("two"), "same hash, another value: not shared")
	g.Expect(s.get(7, "one")).To(Equal("one"))
}
