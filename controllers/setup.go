// Package controllers holds keygate's reconcilers: ApiKey (credentials
// Secrets, rotation, readiness) and TokenPolicy (signing keys, revocations,
// bundle Secret).
package controllers

import (
	"context"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// indexPolicyRef indexes ApiKeys by spec.policyRef.name and a bucket of
// their name, "<policy>/<bucket>": a policy's keys are read a bucket at a
// time (eachApiKeyOfPolicy), as the cache copies every item of a List into
// it (at 100,000 keys a list of all of a policy's keys held some 70 MB).
const indexPolicyRef = "spec.policyRef.name.bucket"

// policyBuckets is the number of buckets of indexPolicyRef.
const policyBuckets = 64

// policyBucket is the indexPolicyRef value of ApiKey name of policy.
func policyBucket(policy, name string) string {
	return policy + "/" + strconv.Itoa(bundle.ShardOf(name, policyBuckets))
}

// anyPolicyBucket is the indexPolicyRef value under which every ApiKey of
// bucket b is indexed across all namespaces ("*" is no policy's name):
// eachApiKey reads them a bucket at a time.
func anyPolicyBucket(b int) string { return "*/" + strconv.Itoa(b) }

// allNamespacesIndexKey is the key under which controller-runtime's cache
// looks an index value up for a List across all namespaces.
const allNamespacesIndexKey = "__all_namespaces/"

// eachApiKey calls f with every ApiKey in the cache, a bucket at a time, as
// eachApiKeyOfPolicy does.
func eachApiKey(ctx context.Context, c client.Reader, f func(*keygatev1.ApiKey) error) error {
	for b := range policyBuckets {
		list := &keygatev1.ApiKeyList{}
		if err := c.List(ctx, list, client.MatchingFields{indexPolicyRef: anyPolicyBucket(b)}, client.UnsafeDisableDeepCopy); err != nil {
			return fmt.Errorf("list ApiKeys: %w", err)
		}
		for i := range list.Items {
			if err := f(&list.Items[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// eachApiKeyOfPolicy calls f with each ApiKey of policy in namespace, from
// the cache, a bucket at a time, until f fails. The ApiKey is read only
// (shared with the cache); f should not keep it, so that a bucket's copies
// are dropped before the next is read.
func eachApiKeyOfPolicy(ctx context.Context, c client.Reader, namespace, policy string, f func(*keygatev1.ApiKey) error) error {
	for b := range policyBuckets {
		list := &keygatev1.ApiKeyList{}
		if err := c.List(ctx, list, client.InNamespace(namespace), client.MatchingFields{indexPolicyRef: policy + "/" + strconv.Itoa(b)},
			client.UnsafeDisableDeepCopy); err != nil {
			return fmt.Errorf("list ApiKeys of TokenPolicy %q: %w", policy, err)
		}
		for i := range list.Items {
			if err := f(&list.Items[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// indexKeyID indexes ApiKeys by a bucket of their status.keyID (the usage
// ConfigMap's keys; apiKeysWithKeyID). An index by the key ID itself kept a
// set per key (client-go's index maps each value to a set of object keys),
// some 270 bytes a key, 25 MiB at 100,000 keys; a bucket's set holds some
// 25 keys at 100,000 (keyIDBuckets), a few bytes a key.
const indexKeyID = "status.keyID.bucket"

// keyIDBuckets is the number of buckets of indexKeyID.
const keyIDBuckets = 4096

// keyIDBucket is the index value of key ID id (FNV-1a, as a key's shard).
func keyIDBucket(id string) string {
	return strconv.Itoa(bundle.ShardOf(id, keyIDBuckets))
}

// apiKeysWithKeyID lists the ApiKeys of namespace whose status names key ID
// id (normally one), read only, from the cache's key ID index.
func apiKeysWithKeyID(ctx context.Context, c client.Reader, namespace, id string) ([]*keygatev1.ApiKey, error) {
	list := &keygatev1.ApiKeyList{}
	if err := c.List(ctx, list, client.InNamespace(namespace), client.MatchingFields{indexKeyID: keyIDBucket(id)},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list ApiKeys of key ID bucket %s: %w", keyIDBucket(id), err)
	}
	var out []*keygatev1.ApiKey
	for i := range list.Items {
		if list.Items[i].Status.KeyID == id {
			out = append(out, &list.Items[i])
		}
	}
	return out, nil
}

// Options configure the reconcilers.
type Options struct {
	// Clock is the time source; the real clock when nil. Tests inject a fake one.
	Clock clock.PassiveClock
	// ApiKeyConcurrency and TokenPolicyConcurrency are the parallel
	// reconciles of each controller (defaults DefaultApiKeyConcurrency and
	// 2). An ApiKey pass mostly waits on API writes, so many run at once
	// cheaply.
	ApiKeyConcurrency      int
	TokenPolicyConcurrency int
}

// DefaultApiKeyConcurrency is the ApiKey reconciles run at once by default.
// 64 (make bench-scale, 10,000 keys: 16 workers, each waiting on an API
// write of 60-150 ms under that load, were busy all the time and set the
// pace; 64 and 128 gave the same time, bound by the API server).
const DefaultApiKeyConcurrency = 64

// SetupWithManager registers the field index and both reconcilers with mgr.
func SetupWithManager(ctx context.Context, mgr manager.Manager, opts Options) error {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.ApiKeyConcurrency <= 0 {
		opts.ApiKeyConcurrency = DefaultApiKeyConcurrency
	}
	if opts.TokenPolicyConcurrency <= 0 {
		opts.TokenPolicyConcurrency = 2
	}
	if err := indexPolicyRefs(ctx, mgr.GetFieldIndexer()); err != nil {
		return err
	}
	if err := warmInformers(ctx, mgr.GetCache()); err != nil {
		return err
	}
	ak := &ApiKeyReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clock: opts.Clock,
		Recorder: mgr.GetEventRecorder("keygate-apikey")}
	if err := ak.setup(mgr, opts.ApiKeyConcurrency); err != nil {
		return err
	}
	tp := &TokenPolicyReconciler{Client: mgr.GetClient(), Clock: opts.Clock, Recorder: mgr.GetEventRecorder("keygate-tokenpolicy")}
	return tp.setup(mgr, opts.TokenPolicyConcurrency)
}

// warmInformers asks informers for the kinds the controllers watch besides
// ApiKeys (whose informer indexPolicyRefs asks for). The cache starts before
// the leader election, but an informer exists only once asked for, and the
// controllers ask when they start, once elected: without this a standby
// replica (--leader-elect) held only the ApiKeys, and on a failover listed
// every credentials Secret after winning the election (docs/operator.md,
// "Leader failover at 100,000 keys").
func warmInformers(ctx context.Context, informers cache.Informers) error {
	for _, o := range []client.Object{&keygatev1.TokenPolicy{}, &corev1.Secret{}, &corev1.ConfigMap{}} {
		if _, err := informers.GetInformer(ctx, o, cache.BlockUntilSynced(false)); err != nil {
			return fmt.Errorf("watch %T: %w", o, err)
		}
	}
	return nil
}

// indexPolicyRefs indexes ApiKeys by the TokenPolicy they name and by their
// key ID. Every lookup is within a namespace (a policy's keys are in its
// own), so when indexer is the manager's cache each value is indexed once,
// under namespace/value: controller-runtime's IndexField also indexes it
// across all namespaces, and with a set per key ID that doubled the key-ID
// index, some 35 MiB at 100,000 keys (make bench-scale). Any other
// FieldIndexer gets IndexField.
func indexPolicyRefs(ctx context.Context, indexer client.FieldIndexer) error {
	if informers, ok := indexer.(cache.Informers); ok {
		inf, err := informers.GetInformer(ctx, &keygatev1.ApiKey{}, cache.BlockUntilSynced(false))
		if err != nil {
			return fmt.Errorf("index ApiKeys: %w", err)
		}
		if err := inf.AddIndexers(apiKeyIndexers()); err != nil {
			return fmt.Errorf("index ApiKeys: %w", err)
		}
		return nil
	}
	if err := indexer.IndexField(ctx, &keygatev1.ApiKey{}, indexPolicyRef, apiKeyPolicyRef); err != nil {
		return fmt.Errorf("index ApiKeys by policy: %w", err)
	}
	if err := indexer.IndexField(ctx, &keygatev1.ApiKey{}, indexKeyID, apiKeyKeyID); err != nil {
		return fmt.Errorf("index ApiKeys by key ID: %w", err)
	}
	return nil
}

// apiKeyPolicyRef is an ApiKey's indexPolicyRef values: its policy's
// bucket, and its bucket across all namespaces (anyPolicyBucket).
func apiKeyPolicyRef(o client.Object) []string {
	return []string{policyBucket(o.(*keygatev1.ApiKey).Spec.PolicyRef.Name, o.GetName()), anyPolicyBucket(bundle.ShardOf(o.GetName(), policyBuckets))}
}

// apiKeyKeyID is an ApiKey's indexKeyID value, none without a key ID.
func apiKeyKeyID(o client.Object) []string {
	if id := o.(*keygatev1.ApiKey).Status.KeyID; id != "" {
		return []string{keyIDBucket(id)}
	}
	return nil
}

// apiKeyIndexers are the indexes added to the cache's ApiKey informer (see
// indexPolicyRefs): the policy's buckets within the namespace, the bucket
// across all namespaces, the key ID's bucket within the namespace.
func apiKeyIndexers() toolscache.Indexers {
	return toolscache.Indexers{
		fieldIndexName(indexPolicyRef): func(obj any) ([]string, error) {
			o, ok := obj.(*keygatev1.ApiKey)
			if !ok {
				return nil, fmt.Errorf("index: %T is not an ApiKey", obj)
			}
			v := apiKeyPolicyRef(o)
			return []string{o.Namespace + "/" + v[0], allNamespacesIndexKey + v[1]}, nil
		},
		fieldIndexName(indexKeyID): namespacedIndex(apiKeyKeyID),
	}
}

// fieldIndexName is the name controller-runtime's cache looks a field index
// up by (client.MatchingFields).
func fieldIndexName(field string) string { return "field:" + field }

// namespacedIndex indexes each value under namespace/value, the key
// controller-runtime's cache looks up for a List within a namespace.
func namespacedIndex(values func(client.Object) []string) toolscache.IndexFunc {
	return func(obj any) ([]string, error) {
		o, ok := obj.(client.Object)
		if !ok {
			return nil, fmt.Errorf("index: %T is not an object", obj)
		}
		vals := values(o)
		out := make([]string, len(vals))
		for i, v := range vals {
			out[i] = o.GetNamespace() + "/" + v
		}
		return out, nil
	}
}

// specOrMetadataChanged lets through changes other than status-only ones.
var specOrMetadataChanged = predicate.Or(predicate.GenerationChangedPredicate{},
	predicate.AnnotationChangedPredicate{}, predicate.LabelChangedPredicate{})

func (r *ApiKeyReconciler) setup(mgr manager.Manager, concurrency int) error {
	err := ctrl.NewControllerManagedBy(mgr).
		Named("apikey").
		For(&keygatev1.ApiKey{}, builder.WithPredicates(specOrMetadataChanged)).
		Owns(&corev1.Secret{}).
		Watches(&keygatev1.TokenPolicy{}, handler.EnqueueRequestsFromMapFunc(r.keysOfPolicy),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Secret{}, bundleHandler{r}).
		Watches(&corev1.ConfigMap{}, usageHandler{r}).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrency}).
		Complete(r)
	if err != nil {
		return fmt.Errorf("set up ApiKey controller: %w", err)
	}
	return nil
}

// keysOfPolicy maps a TokenPolicy to its ApiKeys (it appeared, went, or its limit changed).
func (r *ApiKeyReconciler) keysOfPolicy(ctx context.Context, o client.Object) []reconcile.Request {
	return r.requestsForPolicy(ctx, o.GetNamespace(), o.GetName())
}

// usageHandler re-queues the ApiKeys whose entry in their policy's usage
// ConfigMap a sidecar's report added or changed, found by key ID (an index),
// not every key of the policy: a policy's sidecars report once a minute each.
type usageHandler struct{ r *ApiKeyReconciler }

func (h usageHandler) Create(ctx context.Context, e event.TypedCreateEvent[client.Object], q apiKeyQueue) {
	if cm, ok := e.Object.(*corev1.ConfigMap); ok && isUsageConfigMap(cm) {
		h.enqueue(ctx, cm, nil, q)
	}
}

func (h usageHandler) Update(ctx context.Context, e event.TypedUpdateEvent[client.Object], q apiKeyQueue) {
	o, okOld := e.ObjectOld.(*corev1.ConfigMap)
	n, okNew := e.ObjectNew.(*corev1.ConfigMap)
	if okOld && okNew && isUsageConfigMap(n) {
		h.enqueue(ctx, n, o.Data, q)
	}
}

// Delete: the keys keep the last use their status recorded.
func (h usageHandler) Delete(context.Context, event.TypedDeleteEvent[client.Object], apiKeyQueue) {}

func (h usageHandler) Generic(context.Context, event.TypedGenericEvent[client.Object], apiKeyQueue) {}

// enqueue queues the ApiKeys of the key IDs whose reported minute differs
// between old and cur. A key ID no ApiKey carries in the cache yet (the
// status naming it is not written or not seen yet) queues every key of the
// policy once: rare, and the report is not lost.
func (h usageHandler) enqueue(ctx context.Context, cm *corev1.ConfigMap, old map[string]string, q apiKeyQueue) {
	namespace, cur, unmatched := cm.Namespace, cm.Data, false
	for id, minute := range cur {
		if prev, ok := old[id]; ok && prev == minute {
			continue
		}
		keys, err := apiKeysWithKeyID(ctx, h.r, namespace, id)
		if err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "Failed to find the ApiKey of a reported key ID")
			continue
		}
		unmatched = unmatched || len(keys) == 0
		for _, k := range keys {
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: k.Namespace, Name: k.Name}})
		}
	}
	if unmatched {
		for _, req := range h.r.requestsForPolicy(ctx, namespace, cm.Labels[keygatev1.LabelTokenPolicy]) {
			q.Add(req)
		}
	}
}

func (r *ApiKeyReconciler) requestsForPolicy(ctx context.Context, namespace, policy string) []reconcile.Request {
	var out []reconcile.Request
	if err := eachApiKeyOfPolicy(ctx, r, namespace, policy, func(k *keygatev1.ApiKey) error {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: k.Namespace, Name: k.Name}})
		return nil
	}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list ApiKeys of TokenPolicy", "tokenPolicy", policy)
		return nil
	}
	return out
}

// bundleHandler re-queues the ApiKeys whose readiness a change of their
// policy's bundle Secret may move: those whose entry it added, removed or
// changed, and every key of the policy when the bundle appears, goes, or its
// cuts (limit, size) move. It reads the ApiKeys of a policy only in those
// last cases, never per ApiKey event.
type bundleHandler struct{ r *ApiKeyReconciler }

type apiKeyQueue = workqueue.TypedRateLimitingInterface[reconcile.Request]

func (h bundleHandler) Create(ctx context.Context, e event.TypedCreateEvent[client.Object], q apiKeyQueue) {
	policy, ok := bundlePolicy(e.Object)
	if !ok {
		return
	}
	// A new shard without a size cut moves only the keys it carries; the
	// keys it does not carry were waiting for it with NotInBundle and stay so.
	if s, isSecret := e.Object.(*corev1.Secret); isSecret && isShard(s) {
		if v := h.r.bundles.get(s); v != nil && v.cuts.size == nil {
			for _, e := range v.entries {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: e.name}})
			}
			return
		}
	}
	h.all(ctx, e.Object.GetNamespace(), policy, q)
}

func (h bundleHandler) Delete(ctx context.Context, e event.TypedDeleteEvent[client.Object], q apiKeyQueue) {
	policy, ok := bundlePolicy(e.Object)
	if !ok {
		return
	}
	h.r.bundles.forget(client.ObjectKeyFromObject(e.Object))
	if s, isSecret := e.Object.(*corev1.Secret); isSecret && isShard(s) {
		return // the index stopped naming it first, which re-queued the keys
	}
	h.all(ctx, e.Object.GetNamespace(), policy, q)
}

func (h bundleHandler) Update(ctx context.Context, e event.TypedUpdateEvent[client.Object], q apiKeyQueue) {
	policy, ok := bundlePolicy(e.ObjectNew)
	o, okOld := e.ObjectOld.(*corev1.Secret)
	n, okNew := e.ObjectNew.(*corev1.Secret)
	if !ok || !okOld || !okNew || o.ResourceVersion == n.ResourceVersion {
		return
	}
	names, all := changedKeys(h.r.bundles.get(o), h.r.bundles.get(n))
	h.r.bundles.retire(o)
	if all {
		h.all(ctx, n.Namespace, policy, q)
		return
	}
	for _, name := range names {
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: n.Namespace, Name: name}})
	}
}

func (h bundleHandler) Generic(context.Context, event.TypedGenericEvent[client.Object], apiKeyQueue) {
}

func (h bundleHandler) all(ctx context.Context, namespace, policy string, q apiKeyQueue) {
	for _, req := range h.r.requestsForPolicy(ctx, namespace, policy) {
		q.Add(req)
	}
}

// bundlePolicy names the TokenPolicy of a bundle Secret (a v1 bundle, a v2
// index or a shard); ok is false for every other Secret.
func bundlePolicy(o client.Object) (string, bool) {
	l := o.GetLabels()
	policy := l[keygatev1.LabelTokenPolicy]
	if l[keygatev1.LabelManagedBy] != keygatev1.ManagedByValue || l[keygatev1.LabelApiKey] != "" || policy == "" {
		return "", false
	}
	if _, shard := l[bundle.LabelShard]; shard {
		return policy, true
	}
	return policy, o.GetName() == bundle.SecretName(policy)
}

func isShard(s *corev1.Secret) bool {
	_, ok := s.Labels[bundle.LabelShard]
	return ok
}

func (r *TokenPolicyReconciler) setup(mgr manager.Manager, concurrency int) error {
	r.incremental = true // the watches below name the changed keys (touch)
	err := ctrl.NewControllerManagedBy(mgr).
		Named("tokenpolicy").
		For(&keygatev1.TokenPolicy{}, builder.WithPredicates(specOrMetadataChanged)).
		Owns(&corev1.Secret{}, builder.WithPredicates(predicate.Funcs{
			CreateFunc: func(e event.CreateEvent) bool { r.bundleSecretEvent(e.Object); return true },
			UpdateFunc: func(e event.UpdateEvent) bool { return r.bundleSecretUpdated(e.ObjectNew) },
			DeleteFunc: func(e event.DeleteEvent) bool { r.bundleSecretEvent(e.Object); return true },
		})).
		Owns(&corev1.ConfigMap{}, builder.WithPredicates(predicate.Funcs{
			UpdateFunc: func(e event.UpdateEvent) bool { return !isUsageConfigMap(e.ObjectNew) },
		})).
		Watches(&keygatev1.ApiKey{}, policyOfTouching(policyOfApiKey, r.touchApiKey), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Secret{}, policyOfTouching(policyOfCredentials, r.touchCredentials)).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrency}).
		Complete(r)
	if err != nil {
		return fmt.Errorf("set up TokenPolicy controller: %w", err)
	}
	return nil
}

// policyOfApiKey is the TokenPolicy an ApiKey names.
func policyOfApiKey(o client.Object) (string, bool) {
	return o.(*keygatev1.ApiKey).Spec.PolicyRef.Name, true
}

// policyOfCredentials is the TokenPolicy of a credentials Secret, from its labels.
func policyOfCredentials(o client.Object) (string, bool) {
	if o.GetLabels()[keygatev1.LabelApiKey] == "" {
		return "", false
	}
	p, ok := o.GetLabels()[keygatev1.LabelTokenPolicy]
	return p, ok
}

// bundleSecretEvent tells whether an event of a Secret the policy owns
// needs a pass: not the watch event of a bundle write this process just made.
// A bundle Secret changed or deleted by anyone else is noted, so that the
// next pass of its policy encodes it again (an incremental pass encodes only
// the shards whose keys changed).
func (r *TokenPolicyReconciler) bundleSecretEvent(o client.Object) bool {
	if r.isOwnBundleWrite(o) {
		return false
	}
	if policy, ok := bundlePolicy(o); ok {
		r.shardStates.changedBundleSecret(types.NamespacedName{Namespace: o.GetNamespace(), Name: policy}, o.GetName())
	}
	return true
}

// bundleSecretUpdated is bundleSecretEvent for an update, which is also
// this process's own when it carries the data of a write under way.
func (r *TokenPolicyReconciler) bundleSecretUpdated(o client.Object) bool {
	return !r.isOwnWriteUnderWay(o) && r.bundleSecretEvent(o)
}

// touchApiKey notes, for the incremental bundle pass, that ApiKey o of
// policy changed.
func (r *TokenPolicyReconciler) touchApiKey(policy string, o client.Object) {
	r.shardStates.touch(types.NamespacedName{Namespace: o.GetNamespace(), Name: policy}, o.GetName())
}

// touchCredentials notes that the ApiKey of credentials Secret o changed.
func (r *TokenPolicyReconciler) touchCredentials(policy string, o client.Object) {
	if key := credentialsKeyName(o); key != "" {
		r.shardStates.touch(types.NamespacedName{Namespace: o.GetNamespace(), Name: policy}, key)
	}
}

// policyOf maps an object to the TokenPolicy it belongs to; on an update both
// the old and the new policy are queued, so a key moving between policies
// leaves the old bundle too.
func policyOf(name func(client.Object) (string, bool)) handler.EventHandler {
	return policyOfTouching(name, nil)
}

// policyOfTouching is policyOf that tells touch (when not nil) of each
// (policy, object) before the policy is queued.
func policyOfTouching(name func(client.Object) (string, bool), touch func(policy string, o client.Object)) handler.EventHandler {
	add := func(o client.Object, q apiKeyQueue) {
		if n, ok := name(o); ok && n != "" {
			if touch != nil {
				touch(n, o)
			}
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: n}})
		}
	}
	return handler.Funcs{
		CreateFunc:  func(_ context.Context, e event.CreateEvent, q apiKeyQueue) { add(e.Object, q) },
		UpdateFunc:  func(_ context.Context, e event.UpdateEvent, q apiKeyQueue) { add(e.ObjectOld, q); add(e.ObjectNew, q) },
		DeleteFunc:  func(_ context.Context, e event.DeleteEvent, q apiKeyQueue) { add(e.Object, q) },
		GenericFunc: func(_ context.Context, e event.GenericEvent, q apiKeyQueue) { add(e.Object, q) },
	}
}

// CacheOptions scopes the manager's cache to namespaces (all when empty) and,
// to keep memory flat, caches only the Secrets and ConfigMaps keygate writes
// (labelled app.kubernetes.io/managed-by=keygate), without their
// managedFields (nothing reads them, and they are a good part of each cached
// ApiKey and Secret; a write that leaves them out keeps them on the server).
// A Secret of someone else is therefore invisible to the reconcilers;
// creating over it fails with AlreadyExists, which they report as
// SecretConflict.
func CacheOptions(namespaces []string) cache.Options {
	managed := labels.SelectorFromSet(labels.Set{keygatev1.LabelManagedBy: keygatev1.ManagedByValue})
	opts := cache.Options{
		DefaultTransform: trimForCache,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}:    {Label: managed},
			&corev1.ConfigMap{}: {Label: managed},
		},
	}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}
