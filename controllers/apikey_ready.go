package controllers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// checkReady decides the Ready condition. A key is Ready only when the
// bundle Secret its sidecars read carries its current secret's digest; the
// key's own spec (disabled, expired) and its policy's existence are decided
// here, its place among its siblings (spec.maxApiKeys, the Secret's size) by
// the TokenPolicy reconciler, which records it on the bundle Secret. No pass
// lists the other keys of the policy.
func (r *ApiKeyReconciler) checkReady(ctx context.Context, pass *keyPass) (ctrl.Result, error) {
	key := pass.key
	now := r.Clock.Now()
	policy := &keygatev1.TokenPolicy{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: key.Spec.PolicyRef.Name}, policy); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("read TokenPolicy %q: %w", key.Spec.PolicyRef.Name, err)
		}
		policy = nil
	}
	v, eligible := localVerdict(key, policy, now)
	if eligible {
		var err error
		if v, err = r.bundleVerdict(ctx, key, policy, pass.creds); err != nil {
			return ctrl.Result{}, err
		}
	}
	if wait := r.deferNewKeyStatus(key, v, now); wait > 0 {
		pass.deferStatus = true
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	status := metav1.ConditionFalse
	if v.Ready {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&key.Status.Conditions, metav1.Condition{Type: keygatev1.ConditionReady, Status: status,
		Reason: v.Reason, Message: v.Message, ObservedGeneration: key.Generation})
	key.Status.ExpiresAt = key.Spec.ExpiresAt
	if key.Spec.ExpiresAt != nil && v.Ready {
		return ctrl.Result{RequeueAfter: requeueAt(now, key.Spec.ExpiresAt.Time)}, nil
	}
	return ctrl.Result{}, nil
}

// newKeyStatusDelay is how long a new key's first status may wait for the
// bundle that makes it Ready.
const newKeyStatusDelay = 10 * time.Second

// deferNewKeyStatus decides whether a new key's status write is skipped: a
// key without any status yet that is only waiting for the next bundle
// (NotInBundle) would be written twice within a moment, NotInBundle then
// Ready. The bundle's change re-queues the key, and one write then records
// everything; should the bundle not come, the returned wait re-queues it
// newKeyStatusDelay after its first pass, and from then on it is written.
// The credentials Secret, written already, holds the bookkeeping that
// matters. It returns 0 when the status is to be written now.
func (r *ApiKeyReconciler) deferNewKeyStatus(key *keygatev1.ApiKey, v verdict, now time.Time) time.Duration {
	nn := types.NamespacedName{Namespace: key.Namespace, Name: key.Name}
	if v.Reason != keygatev1.ReasonNotInBundle || len(key.Status.Conditions) > 0 {
		r.firstPass.Delete(nn)
		return 0
	}
	first, _ := r.firstPass.LoadOrStore(nn, now)
	if wait := requeueAt(now, first.(time.Time).Add(newKeyStatusDelay)); wait > 0 {
		return wait
	}
	r.firstPass.Delete(nn)
	return 0
}

// bundleVerdict looks the key up in its policy's published bundle. A key the
// bundle does not carry is LimitExceeded or BundleTooLarge when the bundle's
// cuts leave it out, else NotInBundle: the operator has not published it yet
// (the bundle's next change re-queues it).
func (r *ApiKeyReconciler) bundleVerdict(ctx context.Context, key *keygatev1.ApiKey, policy *keygatev1.TokenPolicy, creds credentials) (verdict, error) {
	name := bundle.SecretName(policy.Name)
	s := &corev1.Secret{}
	err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: name}, s, client.UnsafeDisableDeepCopy) // read only
	switch {
	case apierrors.IsNotFound(err):
		return notInBundle(policy, "has not been published yet"), nil
	case err != nil:
		return verdict{}, fmt.Errorf("read bundle Secret %q: %w", name, err)
	case !metav1.IsControlledBy(s, policy):
		return notInBundle(policy, "is not owned by the TokenPolicy"), nil
	}
	view := r.bundles.get(s)
	if view == nil || view.shard != nil {
		return notInBundle(policy, "cannot be read"), nil
	}
	where, entries, cuts := name, view, view.cuts
	if len(view.shards) > 0 {
		if creds.KeyID == "" {
			return notInBundle(policy, "cannot carry a key without a key ID"), nil
		}
		i := bundle.ShardOf(creds.KeyID, len(view.shards))
		where = view.shards[i]
		shard := &corev1.Secret{}
		err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: where}, shard, client.UnsafeDisableDeepCopy) // read only
		switch {
		case apierrors.IsNotFound(err):
			return notInBundle(policy, "names shard "+where+", which is not written yet"), nil
		case err != nil:
			return verdict{}, fmt.Errorf("read bundle shard %q: %w", where, err)
		case !metav1.IsControlledBy(shard, policy):
			return notInBundle(policy, "names shard "+where+", which is not owned by the TokenPolicy"), nil
		}
		sv := r.bundles.get(shard)
		if sv == nil || sv.shard == nil || sv.shard.Count != len(view.shards) || sv.shard.Index != i ||
			sv.shard.HashKeyID != bundle.HashKeyID(view.hashKey) {
			return notInBundle(policy, "names shard "+where+", which holds another generation"), nil
		}
		entries, cuts = sv, cutoffs{limit: view.cuts.limit, size: sv.cuts.size}
	}
	if e := entries.entry(key.Name); e != nil && creds.KeyID != "" && e.keyID == creds.KeyID &&
		e.carries(bundle.Digest(view.hashKey, creds.Secret)) {
		return verdict{Ready: true, Reason: keygatev1.ReasonReady,
			Message: fmt.Sprintf("The key is accepted by TokenPolicy %q and its current secret is in bundle Secret %s.", policy.Name, where)}, nil
	}
	switch {
	case cuts.limit.excludes(key):
		return limitVerdict(policy), nil
	case cuts.size.excludes(key):
		return verdict{Reason: keygatev1.ReasonBundleTooLarge,
			Message: fmt.Sprintf("Bundle Secret %s is full (%d older keys fill what a Secret holds); this key is not in it and does not work. "+
				"Lower spec.maxApiKeys of TokenPolicy %q, or split the keys over more TokenPolicies.", where, len(entries.entries), policy.Name)}, nil
	}
	return notInBundle(policy, "does not carry the key's current secret yet"), nil
}

func notInBundle(policy *keygatev1.TokenPolicy, why string) verdict {
	return verdict{Reason: keygatev1.ReasonNotInBundle,
		Message: fmt.Sprintf("Bundle Secret %s of TokenPolicy %q %s; the key does not work until it does.", bundle.SecretName(policy.Name), policy.Name, why)}
}

// bundleView is what the ApiKey reconciler needs of one version of a bundle
// Secret: a v1 bundle, a v2 index (shards set, no entries) or a shard (shard
// set).
type bundleView struct {
	resourceVersion string
	hashKey         []byte
	// entries are its entries, sorted by ApiKey name (entry).
	entries []viewEntry
	cuts    cutoffs
	// shards are the shard names of a v2 index.
	shards []string
	// shard is the header of a shard (its keys are in entries).
	shard *bundle.Shard
}

// bundleViews parses each version of a bundle Secret once, however many
// ApiKeys ask about it; it keeps the last two versions of each Secret, the
// pair a watch event compares.
type bundleViews struct {
	mu sync.Mutex
	m  map[types.NamespacedName][2]*bundleView
}

// get returns the view of s, nil when its bundle does not parse. The parse
// happens under the lock, so that the workers asking about a new version at
// once parse it once, not once each.
func (c *bundleViews) get(s *corev1.Secret) *bundleView {
	nn := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	c.mu.Lock()
	defer c.mu.Unlock()
	pair := c.m[nn]
	for _, v := range pair {
		if v != nil && v.resourceVersion == s.ResourceVersion {
			return v
		}
	}
	v := &bundleView{resourceVersion: s.ResourceVersion, cuts: readCutoffs(s.Annotations)}
	var keys []bundle.Key
	if _, isShard := s.Labels[bundle.LabelShard]; isShard {
		sh, err := bundle.ParseShard(s.Data[bundle.SecretDataKey])
		if err != nil {
			return nil
		}
		keys, sh.Keys = sh.Keys, nil
		v.shard = sh
	} else {
		b, err := bundle.Parse(s.Data[bundle.SecretDataKey])
		if err != nil {
			return nil
		}
		keys, v.hashKey, v.shards = b.Keys, b.HashKey, b.Shards
	}
	v.entries = newViewEntries(keys)
	if c.m == nil {
		c.m = map[types.NamespacedName][2]*bundleView{}
	}
	c.m[nn] = [2]*bundleView{v, pair[0]}
	return v
}

// retire drops the view of s's version (a version before the current one,
// once its update event has been compared): a worker asks only about the
// version in the cache, so at 100,000 keys holding the version before of
// every shard as well was some 30 MiB for nothing. Were it asked again, it
// would be parsed again.
func (c *bundleViews) retire(s *corev1.Secret) {
	nn := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	c.mu.Lock()
	defer c.mu.Unlock()
	pair, ok := c.m[nn]
	if !ok {
		return
	}
	var kept [2]*bundleView
	n := 0
	for _, v := range pair {
		if v != nil && v.resourceVersion != s.ResourceVersion {
			kept[n] = v
			n++
		}
	}
	c.m[nn] = kept
}

// forget drops the views of a deleted Secret.
func (c *bundleViews) forget(nn types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, nn)
}

// viewEntry is what Ready depends on of a bundle entry (sameEntry,
// carries): the ApiKey's name, its key ID and its secrets' digests, one
// after the other. At 100,000 keys the parsed entries (a bundle.Key each, in
// a map by name) were some 300 bytes a key; these are some 120.
type viewEntry struct {
	name, keyID, digests string
}

// newViewEntries keeps what Ready depends on of keys, sorted by name. A
// digest of another size than a SHA-256 (no valid bundle has one) is left
// out: no secret's digest could match it.
func newViewEntries(keys []bundle.Key) []viewEntry {
	out := make([]viewEntry, len(keys))
	for i := range keys {
		k := &keys[i]
		digests := make([]byte, 0, len(k.Secrets)*sha256.Size)
		for _, s := range k.Secrets {
			if len(s.Digest) == sha256.Size {
				digests = append(digests, s.Digest...)
			}
		}
		out[i] = viewEntry{name: k.Name, keyID: k.KeyID, digests: string(digests)}
	}
	slices.SortFunc(out, func(a, b viewEntry) int { return strings.Compare(a.name, b.name) })
	return out
}

// entry is the entry of ApiKey name; nil when there is none.
func (v *bundleView) entry(name string) *viewEntry {
	i, ok := slices.BinarySearchFunc(v.entries, name, func(e viewEntry, n string) int { return strings.Compare(e.name, n) })
	if !ok {
		return nil
	}
	return &v.entries[i]
}

// carries reports whether the entry holds digest (in constant time for each
// digest it holds).
func (e *viewEntry) carries(digest []byte) bool {
	found := false
	for i := 0; len(digest) == sha256.Size && i+sha256.Size <= len(e.digests); i += sha256.Size {
		if subtle.ConstantTimeCompare([]byte(e.digests[i:i+sha256.Size]), digest) == 1 {
			found = true
		}
	}
	return found
}

// changedKeys lists the ApiKeys whose entry differs between two versions of
// a bundle or a shard (added, removed or changed); all is true when the cuts
// moved, and so may have changed the reason of keys neither version carries,
// or when an index changed its shards or hash key.
func changedKeys(old, cur *bundleView) (names []string, all bool) {
	if old == nil || cur == nil || !old.cuts.equal(cur.cuts) || !slices.Equal(old.shards, cur.shards) || !bytes.Equal(old.hashKey, cur.hashKey) {
		return nil, true
	}
	for i := range cur.entries {
		e := &cur.entries[i]
		if o := old.entry(e.name); o == nil || !sameEntry(o, e) {
			names = append(names, e.name)
		}
	}
	for i := range old.entries {
		if cur.entry(old.entries[i].name) == nil {
			names = append(names, old.entries[i].name)
		}
	}
	return names, false
}

// sameEntry compares what Ready depends on: the key ID and the digests.
func sameEntry(a, b *viewEntry) bool {
	if a.keyID != b.keyID || len(a.digests) != len(b.digests) {
		return false
	}
	for i := 0; i+sha256.Size <= len(a.digests); i += sha256.Size {
		if !b.carries([]byte(a.digests[i : i+sha256.Size])) {
			return false
		}
	}
	return true
}
