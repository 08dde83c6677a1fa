package controllers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// ensureBundle publishes the bundle Secret from the policy, its signing keys
// and its accepted ApiKeys; an unchanged bundle is not written. When the
// accepted keys do not all fit in a Secret, it still publishes, with the
// longest prefix of them (in admission order) that fits: a removal (a key
// disabled, deleted, expired, a grace period ended) only makes the bundle
// smaller, so it is never held back by the size limit. The cut is recorded on
// the Secret for the ApiKey reconciler (see cutoffs). The cache is read
// without deep copies (nothing read here is modified).
func (r *TokenPolicyReconciler) ensureBundle(ctx context.Context, pass *policyPass) (ctrl.Result, error) {
	p := pass.policy
	b := &bundle.Bundle{
		Version:     bundle.FormatVersion,
		Policy:      resolvePolicy(p),
		HashKey:     pass.signing.HashKey,
		SigningKeys: pass.signing.Keys,
	}
	var (
		fit, accepted int
		shards        []string
		wakeups       []time.Time
		retryAfter    time.Duration
	)
	if count := bundle.ShardCount(maxApiKeys(p)); count == 0 {
		r.shardStates.forget(client.ObjectKeyFromObject(p))
		pub, n, wake, err := r.ensureUnshardedBundle(ctx, pass, b)
		if err != nil {
			return ctrl.Result{}, err
		}
		fit, accepted, wakeups = len(pub.kept), n, wake
	} else {
		pub, err := r.ensureShardedBundle(ctx, pass, b, count)
		if err != nil {
			return ctrl.Result{}, err
		}
		fit, accepted, shards, retryAfter = pub.kept, pub.kept+pub.over, pub.names, pub.retryAfter
		wakeups = []time.Time{pub.wake}
	}
	if err := r.deleteStaleShards(ctx, p, shards); err != nil {
		return ctrl.Result{}, err
	}

	name := bundle.SecretName(p.Name)
	p.Status.ApiKeys = int32(fit) //nolint:gosec // at most maxApiKeys
	p.Status.BundleSecretName = name
	p.Status.Enforcement = keygatev1.EnforcementEnforce
	if b.Policy.Enforcement == bundle.EnforcementAudit {
		p.Status.Enforcement = keygatev1.EnforcementAudit
	}
	meta.RemoveStatusCondition(&p.Status.Conditions, keygatev1.ConditionStalled)
	where := "Bundle Secret " + name
	if len(shards) > 0 {
		where = fmt.Sprintf("Bundle Secret %s (index of %d shards)", name, len(shards))
	}
	ready := metav1.Condition{Type: keygatev1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: keygatev1.ReasonBundleUpdated, ObservedGeneration: p.Generation,
		Message: fmt.Sprintf("%s holds %d ApiKeys and %d signing keys.", where, fit, len(b.SigningKeys))}
	if fit < accepted {
		ready.Status, ready.Reason = metav1.ConditionFalse, keygatev1.ReasonBundleTooLarge
		ready.Message = fmt.Sprintf("Only %d of the %d accepted ApiKeys fit in %s (a Secret holds 1 MiB); "+
			"the other %d are not Ready (reason BundleTooLarge) and do not work. Removals are still published. "+
			"Lower spec.maxApiKeys or split the keys over more TokenPolicies.",
			fit, accepted, where, accepted-fit)
	}
	meta.SetStatusCondition(&p.Status.Conditions, ready)
	res := ctrl.Result{RequeueAfter: requeueAt(pass.now, wakeups...)}
	if w := retryAfter; w > 0 && (res.RequeueAfter == 0 || w < res.RequeueAfter) {
		res.RequeueAfter = w
	}
	return res, nil
}

// ensureUnshardedBundle publishes the v1 bundle from every accepted key; it
// returns how many keys have an entry and when entries next change by
// themselves.
func (r *TokenPolicyReconciler) ensureUnshardedBundle(ctx context.Context, pass *policyPass, b *bundle.Bundle) (published, int, []time.Time, error) {
	p := pass.policy
	var keys []keygatev1.ApiKey
	if err := eachApiKeyOfPolicy(ctx, r, p.Namespace, p.Name, func(k *keygatev1.ApiKey) error {
		keys = append(keys, *k)
		return nil
	}); err != nil {
		return published{}, 0, nil, err
	}
	secrets := &corev1.SecretList{}
	if err := r.List(ctx, secrets, client.InNamespace(p.Namespace), client.MatchingLabels{keygatev1.LabelTokenPolicy: p.Name},
		client.HasLabels{keygatev1.LabelApiKey}, client.UnsafeDisableDeepCopy); err != nil {
		return published{}, 0, nil, fmt.Errorf("list credentials Secrets of TokenPolicy %q: %w", p.Name, err)
	}
	byName := make(map[string]*corev1.Secret, len(secrets.Items))
	for i := range secrets.Items {
		byName[secrets.Items[i].Name] = &secrets.Items[i]
	}
	adm := admitOrdered(keys, p, pass.now)

	// The entries of the accepted keys in admission order; a key ID seen
	// twice (only a hand-made credentials Secret copied from another key can
	// cause one) stays with the older key, so one broken key never makes the
	// whole bundle invalid.
	entries := make([]bundle.Key, 0, len(adm.accepted))
	owners := make([]*keygatev1.ApiKey, 0, len(adm.accepted))
	seen := make(map[string]bool, len(adm.accepted))
	policyKey := client.ObjectKeyFromObject(p)
	memo := r.creds.begin(policyKey)
	for _, key := range adm.accepted {
		s := byName[credentialsSecretName(key)]
		c, digest := memo.read(s, pass.signing.HashKey)
		k, ok := bundleKey(key, s, c, digest, pass.signing.HashKey, pass.now)
		if !ok || seen[k.KeyID] {
			continue
		}
		seen[k.KeyID] = true
		entries = append(entries, k)
		owners = append(owners, key)
	}
	pub, err := r.publishUnsharded(ctx, p, b, entries, owners, adm.limitCut)
	if err != nil {
		return published{}, 0, nil, err
	}
	r.creds.end(policyKey, memo)
	var wakeups []time.Time
	for _, key := range pub.kept {
		c, _ := memo.read(byName[credentialsSecretName(key)], pass.signing.HashKey)
		wakeups = append(wakeups, keyWakeups(key, c)...)
	}
	return pub, len(entries), wakeups, nil
}

// published is what a v1 bundle write put in front of the sidecars.
type published struct {
	// kept are the ApiKeys the bundle carries.
	kept []*keygatev1.ApiKey
}

// publishUnsharded writes the v1 bundle: every entry in one Secret, the
// oldest that fit when not all do.
func (r *TokenPolicyReconciler) publishUnsharded(ctx context.Context, p *keygatev1.TokenPolicy, b *bundle.Bundle,
	entries []bundle.Key, owners []*keygatev1.ApiKey, limitCut *keygatev1.ApiKey) (published, error) {
	fit, data, err := packBundle(b, entries, maxBundleBytes)
	if err != nil {
		return published{}, err
	}
	cuts := cutoffs{limit: cutAfter(limitCut), size: sizeCut(owners, fit, len(entries))}
	if _, _, err := r.writeBundle(ctx, p, bundle.SecretName(p.Name), data, cuts.annotations(), nil); err != nil {
		return published{}, err
	}
	return published{kept: owners[:fit]}, nil
}

// sizeCut is the size cutoff after the first fit of n owners; nil when all fit.
func sizeCut(owners []*keygatev1.ApiKey, fit, n int) *cutoff {
	switch {
	case fit >= n:
		return nil
	case fit == 0:
		return &cutoff{} // none fits
	}
	return cutAfter(owners[fit-1])
}

// packBundle encodes b with the longest prefix of entries whose encoding
// fits in limit bytes, and returns how many entries it holds. The bundle
// lists its keys sorted by key ID whatever the prefix.
func packBundle(b *bundle.Bundle, entries []bundle.Key, limit int) (int, []byte, error) {
	return packKeys(entries, limit, func(keys []bundle.Key) ([]byte, error) {
		b.Keys = keys
		if err := b.Validate(); err != nil {
			return nil, fmt.Errorf("build bundle: %w", err)
		}
		return bundle.Marshal(b)
	})
}

// packKeys encodes, with encode, the longest prefix of entries whose
// encoding fits in limit bytes (sorted by key ID), and returns its length.
// encode must write the keys as one JSON array, and nothing else that
// depends on them.
func packKeys(entries []bundle.Key, limit int, encode func([]bundle.Key) ([]byte, error)) (int, []byte, error) {
	enc := func(n int) ([]byte, error) {
		keys := append(make([]bundle.Key, 0, n), entries[:n]...)
		sortKeys(keys)
		data, err := encode(keys)
		if err != nil {
			return nil, fmt.Errorf("encode bundle: %w", err)
		}
		return data, nil
	}
	data, err := enc(len(entries))
	if err != nil || len(data) <= limit {
		return len(entries), data, err
	}
	// Too large: the size of the encoding is that of the document without
	// keys plus each entry and a comma between two.
	empty, err := enc(0)
	if err != nil {
		return 0, nil, err
	}
	n, err := prefixFit(len(empty), limit, len(entries), func(i int) (int, error) {
		e, err := json.Marshal(&entries[i])
		if err != nil {
			return 0, fmt.Errorf("encode bundle entry: %w", err)
		}
		return len(e), nil
	})
	if err != nil {
		return 0, nil, err
	}
	data, err = enc(n)
	if err == nil && len(data) > limit {
		err = fmt.Errorf("bundle of %d keys is %d bytes, over %d: %w", n, len(data), limit, errBundleTooLarge)
	}
	return n, data, err
}

// prefixFit is how many of the first n entries fit in limit bytes after a
// document of empty bytes: each entry adds its encoding's size (size(i)) and
// one comma after the first.
func prefixFit(empty, limit, n int, size func(i int) (int, error)) (int, error) {
	total := empty
	for i := range n {
		add, err := size(i)
		if err != nil {
			return 0, err
		}
		if i > 0 {
			add++
		}
		if total+add > limit {
			return i, nil
		}
		total += add
	}
	return n, nil
}

// writeBundle creates the bundle Secret or replaces it when its bytes or its
// annotations differ; the write is guarded by the resourceVersion read. It
// returns the resourceVersion that holds data and whether it wrote it.
func (r *TokenPolicyReconciler) writeBundle(ctx context.Context, p *keygatev1.TokenPolicy, name string, data []byte, annotations, labels map[string]string) (rv string, wrote bool, err error) {
	cached := &corev1.Secret{}
	found, err := r.getOwned(ctx, p, cached, name, client.UnsafeDisableDeepCopy)
	if err != nil {
		return "", false, fmt.Errorf("bundle Secret: %w", err)
	}
	if found {
		if cached, err = r.awaitOwnWrite(ctx, p, cached); err != nil {
			return "", false, err
		}
	}
	desired := &corev1.Secret{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{bundle.SecretDataKey: data}}
	if found {
		cached.ObjectMeta.DeepCopyInto(&desired.ObjectMeta)
	} else {
		desired.ObjectMeta = metav1.ObjectMeta{Namespace: p.Namespace, Name: name}
	}
	desired.Annotations = withCutoffs(desired.Annotations, annotations)
	if len(labels) > 0 {
		desired.Labels = maps.Clone(desired.Labels)
		if desired.Labels == nil {
			desired.Labels = map[string]string{}
		}
		maps.Copy(desired.Labels, labels)
	}
	if err := r.ownedObject(p, desired); err != nil {
		return "", false, err
	}
	if found && bytes.Equal(cached.Data[bundle.SecretDataKey], data) && len(cached.Data) == 1 && cached.Type == desired.Type &&
		maps.Equal(cached.Annotations, desired.Annotations) &&
		equality.Semantic.DeepEqual(cached.Labels, desired.Labels) && equality.Semantic.DeepEqual(cached.OwnerReferences, desired.OwnerReferences) {
		return cached.ResourceVersion, false, nil
	}
	nn := types.NamespacedName{Namespace: p.Namespace, Name: name}
	r.writing.Store(nn, data)
	defer r.writing.Delete(nn) // after ownWrites.Store below: no event falls between the two
	if found {
		err = r.Update(ctx, desired, fieldOwner)
	} else {
		err = r.Create(ctx, desired, fieldOwner)
	}
	if err != nil {
		return "", false, fmt.Errorf("write bundle Secret %q: %w", name, err)
	}
	r.ownWrites.Store(nn, desired.ResourceVersion)
	ctrl.LoggerFrom(ctx).V(1).Info("Wrote bundle Secret", "secret", name, "bytes", len(data))
	return desired.ResourceVersion, true, nil
}

// ownWriteWait bounds how long a pass waits for the cache to show the
// bundle Secret this process wrote last; past it, the pass ends with
// errBundleCacheBehind and is retried after ownWriteRetry.
const (
	ownWriteWait  = 500 * time.Millisecond
	ownWriteRetry = 250 * time.Millisecond
)

// errBundleCacheBehind ends a pass quietly: the cache has not caught up
// with a bundle Secret this process wrote (a loaded API server's watch may
// lag by seconds). Nothing failed; the pass is retried shortly.
var errBundleCacheBehind = errors.New("the cache has not caught up with the bundle Secret written")

// awaitOwnWrite returns the cached bundle Secret once the cache holds at
// least the version this process last wrote. A pass that starts right after
// the previous one (the shards are written side by side) may otherwise read
// the version before: an update from it is refused as a conflict, and worse,
// content equal to that older version would not be written at all, though
// the API server holds the newer one (a key deleted just after being added
// would stay in the bundle).
func (r *TokenPolicyReconciler) awaitOwnWrite(ctx context.Context, p *keygatev1.TokenPolicy, cached *corev1.Secret) (*corev1.Secret, error) {
	nn := types.NamespacedName{Namespace: cached.Namespace, Name: cached.Name}
	v, ok := r.ownWrites.Load(nn)
	if !ok {
		return cached, nil
	}
	wrote := v.(string)
	behind := func(s *corev1.Secret) bool {
		c, err := resourceversion.CompareResourceVersion(s.ResourceVersion, wrote)
		return err == nil && c < 0
	}
	if !behind(cached) {
		return cached, nil
	}
	err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, ownWriteWait, false, func(ctx context.Context) (bool, error) {
		fresh := &corev1.Secret{}
		if err := r.Get(ctx, nn, fresh, client.UnsafeDisableDeepCopy); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		cached = fresh
		return !behind(fresh), nil
	})
	if err != nil {
		if ctx.Err() == nil {
			err = errBundleCacheBehind
		}
		return nil, fmt.Errorf("bundle Secret %q at resourceVersion %s: %w", nn.Name, wrote, err)
	}
	if !metav1.IsControlledBy(cached, p) {
		return nil, fmt.Errorf("%q exists and is not owned by TokenPolicy %q", nn.Name, p.Name)
	}
	return cached, nil
}

// isOwnBundleWrite filters the watch event of a bundle write this process
// just made: rebuilding the bundle for it would only find it unchanged.
func (r *TokenPolicyReconciler) isOwnBundleWrite(o client.Object) bool {
	rv, ok := r.ownWrites.Load(types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()})
	return ok && rv == o.GetResourceVersion()
}

// isOwnWriteUnderWay tells whether an update event of a bundle Secret
// carries the data this process is writing to it right now: the event of
// that write, arrived before the write's answer (ownWrites does not know
// its resourceVersion yet). Taken for a change by someone else, it cost a
// pass that re-encoded the shard and found it unchanged, and a key change
// arriving meanwhile waited for that pass (docs/operator.md, "At scale").
// Anyone else's write of the same bytes can only have come first, and then
// this process's write fails on its resourceVersion and is retried.
func (r *TokenPolicyReconciler) isOwnWriteUnderWay(o client.Object) bool {
	data, ok := r.writing.Load(types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()})
	s, isSecret := o.(*corev1.Secret)
	return ok && isSecret && bytes.Equal(s.Data[bundle.SecretDataKey], data.([]byte))
}
