package controllers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
	keys := &keygatev1.ApiKeyList{}
	if err := r.List(ctx, keys, client.InNamespace(p.Namespace), client.MatchingFields{indexPolicyRef: p.Name},
		client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("list ApiKeys of TokenPolicy %q: %w", p.Name, err)
	}
	secrets := &corev1.SecretList{}
	if err := r.List(ctx, secrets, client.InNamespace(p.Namespace), client.MatchingLabels{keygatev1.LabelTokenPolicy: p.Name},
		client.HasLabels{keygatev1.LabelApiKey}, client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("list credentials Secrets of TokenPolicy %q: %w", p.Name, err)
	}
	byName := make(map[string]*corev1.Secret, len(secrets.Items))
	for i := range secrets.Items {
		byName[secrets.Items[i].Name] = &secrets.Items[i]
	}
	adm := admitOrdered(keys.Items, p, pass.now)

	// The entries of the accepted keys in admission order; a key ID seen
	// twice (only a hand-made credentials Secret copied from another key can
	// cause one) stays with the older key, so one broken key never makes the
	// whole bundle invalid.
	entries := make([]bundle.Key, 0, len(adm.accepted))
	owners := make([]*keygatev1.ApiKey, 0, len(adm.accepted))
	seen := make(map[string]bool, len(adm.accepted))
	for _, key := range adm.accepted {
		k, ok := bundleKey(key, byName[credentialsSecretName(key)], pass.signing.HashKey, pass.now)
		if !ok || seen[k.KeyID] {
			continue
		}
		seen[k.KeyID] = true
		entries = append(entries, k)
		owners = append(owners, key)
	}
	b := &bundle.Bundle{
		Version:     bundle.FormatVersion,
		Policy:      resolvePolicy(p),
		HashKey:     pass.signing.HashKey,
		SigningKeys: pass.signing.Keys,
	}
	fit, data, err := packBundle(b, entries, maxBundleBytes)
	if err != nil {
		return ctrl.Result{}, err
	}
	cuts := cutoffs{limit: cutAfter(adm.limitCut)}
	if fit < len(entries) {
		cuts.size = &cutoff{} // none fits
		if fit > 0 {
			cuts.size = cutAfter(owners[fit-1])
		}
	}
	var wakeups []time.Time
	for _, key := range owners[:fit] {
		wakeups = append(wakeups, keyWakeups(key, byName[credentialsSecretName(key)])...)
	}

	name := bundle.SecretName(p.Name)
	if err := r.writeBundle(ctx, p, name, data, cuts.annotations()); err != nil {
		return ctrl.Result{}, err
	}
	p.Status.ApiKeys = int32(fit) //nolint:gosec // at most maxApiKeys
	p.Status.BundleSecretName = name
	p.Status.Enforcement = keygatev1.EnforcementEnforce
	if b.Policy.Enforcement == bundle.EnforcementAudit {
		p.Status.Enforcement = keygatev1.EnforcementAudit
	}
	meta.RemoveStatusCondition(&p.Status.Conditions, keygatev1.ConditionStalled)
	ready := metav1.Condition{Type: keygatev1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: keygatev1.ReasonBundleUpdated, ObservedGeneration: p.Generation,
		Message: fmt.Sprintf("Bundle Secret %s holds %d ApiKeys and %d signing keys.", name, fit, len(b.SigningKeys))}
	if fit < len(entries) {
		ready.Status, ready.Reason = metav1.ConditionFalse, keygatev1.ReasonBundleTooLarge
		ready.Message = fmt.Sprintf("Only %d of the %d accepted ApiKeys fit in bundle Secret %s (%d KiB, a Secret holds 1 MiB); "+
			"the other %d are not Ready (reason BundleTooLarge) and do not work. Removals are still published. "+
			"Lower spec.maxApiKeys or split the keys over more TokenPolicies.",
			fit, len(entries), name, len(data)/1024, len(entries)-fit)
	}
	meta.SetStatusCondition(&p.Status.Conditions, ready)
	return ctrl.Result{RequeueAfter: requeueAt(pass.now, wakeups...)}, nil
}

// packBundle encodes b with the longest prefix of entries whose encoding
// fits in limit bytes, and returns how many entries it holds. The bundle
// lists its keys sorted by key ID whatever the prefix.
func packBundle(b *bundle.Bundle, entries []bundle.Key, limit int) (int, []byte, error) {
	encode := func(n int) ([]byte, error) {
		b.Keys = append(make([]bundle.Key, 0, n), entries[:n]...)
		sortKeys(b.Keys)
		if err := b.Validate(); err != nil {
			return nil, fmt.Errorf("build bundle: %w", err)
		}
		data, err := bundle.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("encode bundle: %w", err)
		}
		return data, nil
	}
	data, err := encode(len(entries))
	if err != nil || len(data) <= limit {
		return len(entries), data, err
	}
	// Too large: the size of the encoding is that of the bundle without keys
	// plus each entry and a comma between two.
	empty, err := encode(0)
	if err != nil {
		return 0, nil, err
	}
	size, n := len(empty), 0
	for i := range entries {
		e, err := json.Marshal(&entries[i])
		if err != nil {
			return 0, nil, fmt.Errorf("encode bundle entry: %w", err)
		}
		add := len(e)
		if i > 0 {
			add++
		}
		if size+add > limit {
			break
		}
		size += add
		n++
	}
	data, err = encode(n)
	if err == nil && len(data) > limit {
		err = fmt.Errorf("bundle of %d keys is %d bytes, over %d: %w", n, len(data), limit, errBundleTooLarge)
	}
	return n, data, err
}

// writeBundle creates the bundle Secret or replaces it when its bytes or its
// annotations differ; the write is guarded by the resourceVersion read.
func (r *TokenPolicyReconciler) writeBundle(ctx context.Context, p *keygatev1.TokenPolicy, name string, data []byte, annotations map[string]string) error {
	cached := &corev1.Secret{}
	found, err := r.getOwned(ctx, p, cached, name, client.UnsafeDisableDeepCopy)
	if err != nil {
		return fmt.Errorf("bundle Secret: %w", err)
	}
	desired := &corev1.Secret{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{bundle.SecretDataKey: data}}
	if found {
		cached.ObjectMeta.DeepCopyInto(&desired.ObjectMeta)
	} else {
		desired.ObjectMeta = metav1.ObjectMeta{Namespace: p.Namespace, Name: name}
	}
	desired.Annotations = withCutoffs(desired.Annotations, annotations)
	if err := r.ownedObject(p, desired); err != nil {
		return err
	}
	if found && bytes.Equal(cached.Data[bundle.SecretDataKey], data) && len(cached.Data) == 1 && cached.Type == desired.Type &&
		maps.Equal(cached.Annotations, desired.Annotations) &&
		equality.Semantic.DeepEqual(cached.Labels, desired.Labels) && equality.Semantic.DeepEqual(cached.OwnerReferences, desired.OwnerReferences) {
		return nil
	}
	if found {
		err = r.Update(ctx, desired, fieldOwner)
	} else {
		err = r.Create(ctx, desired, fieldOwner)
	}
	if err != nil {
		return fmt.Errorf("write bundle Secret %q: %w", name, err)
	}
	r.ownWrites.Store(types.NamespacedName{Namespace: p.Namespace, Name: name}, desired.ResourceVersion)
	ctrl.LoggerFrom(ctx).V(1).Info("Wrote bundle Secret", "secret", name, "bytes", len(data))
	return nil
}

// isOwnBundleWrite filters the watch event of a bundle write this process
// just made: rebuilding the bundle for it would only find it unchanged.
func (r *TokenPolicyReconciler) isOwnBundleWrite(o client.Object) bool {
	rv, ok := r.ownWrites.Load(types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()})
	return ok && rv == o.GetResourceVersion()
}
