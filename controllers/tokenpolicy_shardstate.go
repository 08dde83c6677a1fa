package controllers

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// fullPassEvery bounds how long a sharded policy goes on incremental passes
// alone: past it, the next pass reads every key again (a safety net: the
// watches deliver every change, a relist included, and the cache's resync
// names every key). Such a pass reuses the entries of the keys whose ApiKey
// and Secret did not change, yet at 100,000 keys it still takes some 0.4 s
// and 300 MB of garbage (BenchmarkBundlePass/full), so it is rare.
const fullPassEvery = 30 * time.Minute

// shardStates keeps, per sharded policy, what its passes built: each accepted
// key's encoded entry and its shard, and which shards changed since they were
// last written. A pass then reads only the ApiKeys that changed since the
// previous one (named by the watch events, touch) and re-encodes only their
// shards: at 100,000 keys a pass that carried one change cost 0.6 s of CPU
// and 365 MB of garbage (sort, entries and encoding of every key) before.
// Whatever concerns every shard (the policy's spec, hash key, shard count,
// a policy at its key limit, a restart, a failed read) makes the pass a full
// one that reads every key.
type shardStates struct {
	mu sync.Mutex
	m  map[types.NamespacedName]*shardState
	// dirty is, per policy, the ApiKeys changed since a pass last took them.
	dirty map[types.NamespacedName]map[string]struct{}
	// rewrite is, per policy, its bundle Secrets changed by someone else
	// since a pass last took them: their next pass writes them again.
	rewrite map[types.NamespacedName]map[string]struct{}
	// since is, per policy, when the oldest change a pass has not taken yet
	// was noted (how long a change waited for its pass, in the pass's log).
	since map[types.NamespacedName]time.Time
}

// shardState is what the passes of one sharded policy built.
type shardState struct {
	// basis is everything that all shards depend on; another basis makes
	// the next pass a full one.
	basis string
	// built is when the last full pass ran.
	built time.Time
	// keys are the policy's eligible keys (neither deleted, disabled nor
	// expired) by ApiKey name, with or without an entry.
	keys   map[string]*keyState
	shards []*shardSet
	// wake is the earliest time at which a key's entry or eligibility
	// changes by itself (an expiry, a grace period's end); zero: none.
	wake time.Time
	// limited: more keys are eligible than spec.maxApiKeys; the next pass
	// is a full one (the admission order decides over every shard), which
	// reuses the entries.
	limited bool
}

// keyState is one eligible key as a pass saw it. It is never modified: a
// change replaces it.
type keyState struct {
	name    string
	created time.Time
	// shard is the shard of the key's entry; -1 when it has none (no
	// credentials Secret yet, or one edited by hand).
	shard int
	keyID string
	// entry is the key's bundle entry, encoded (json.Marshal of a bundle.Key).
	entry []byte
	// wake is the next time the key's entry or eligibility changes by
	// itself; zero: never.
	wake time.Time
	// keyVersion and secretVersion are the resourceVersions of the ApiKey
	// and its credentials Secret ("" when none) the state was made from.
	keyVersion, secretVersion string
}

// reusable tells whether k still holds for the ApiKey and credentials
// Secret at these versions at now.
func (k *keyState) reusable(key *keygatev1.ApiKey, s *corev1.Secret, now time.Time) bool {
	sv := ""
	if s != nil {
		sv = s.ResourceVersion
	}
	return k.keyVersion == key.ResourceVersion && k.secretVersion == sv && (k.wake.IsZero() || now.Before(k.wake))
}

func (k *keyState) same(o *keyState) bool {
	return k.shard == o.shard && k.keyID == o.keyID && k.created.Equal(o.created) && bytes.Equal(k.entry, o.entry)
}

// shardSet is one shard's keys and what was last published of it.
type shardSet struct {
	members map[string]*keyState
	// dirty: the members changed since the shard was last written (or it
	// never was, or it waits for the additions' pace).
	dirty bool
	// kept and over are the keys the published shard carries and those
	// left out for size (duplicates of a key ID not counted), as of its
	// last pass.
	kept, over int
}

func newShardState(basis string, built time.Time, count int) *shardState {
	st := &shardState{basis: basis, built: built, keys: map[string]*keyState{}, shards: make([]*shardSet, count)}
	for i := range st.shards {
		st.shards[i] = &shardSet{members: map[string]*keyState{}, dirty: true}
	}
	return st
}

// set records key name's new state (nil: not eligible, or gone) and marks
// the shards it leaves or enters.
func (st *shardState) set(name string, k *keyState) {
	if k != nil && !k.wake.IsZero() && (st.wake.IsZero() || k.wake.Before(st.wake)) {
		st.wake = k.wake
	}
	old := st.keys[name]
	switch {
	case old == nil && k == nil:
		return
	case old != nil && k != nil && old.same(k):
		st.keys[name] = k // the same entry; only its wake may differ
		return
	}
	if old != nil {
		delete(st.keys, name)
		if old.shard >= 0 {
			sh := st.shards[old.shard]
			delete(sh.members, name)
			sh.dirty = true
		}
	}
	if k != nil {
		st.keys[name] = k
		if k.shard >= 0 {
			sh := st.shards[k.shard]
			sh.members[name] = k
			sh.dirty = true
		}
	}
}

// due lists the keys whose wake time has come at now (and recomputes the
// state's wake from the others); none while now is before the state's wake.
func (st *shardState) due(now time.Time) []string {
	if st.wake.IsZero() || now.Before(st.wake) {
		return nil
	}
	var out []string
	st.wake = time.Time{}
	for name, k := range st.keys {
		switch {
		case k.wake.IsZero():
		case !now.Before(k.wake):
			out = append(out, name)
		case st.wake.IsZero() || k.wake.Before(st.wake):
			st.wake = k.wake
		}
	}
	return out
}

// ordered is the shard's keys in admission order, a key ID seen twice (only
// a hand-made credentials Secret copied from another key can cause one) kept
// with the older key only, as the full bundle does.
func (sh *shardSet) ordered() []*keyState {
	out := make([]*keyState, 0, len(sh.members))
	for _, k := range sh.members {
		out = append(out, k)
	}
	slices.SortFunc(out, byCreation)
	seen := make(map[string]bool, len(out))
	kept := out[:0]
	for _, k := range out {
		if !seen[k.keyID] {
			seen[k.keyID] = true
			kept = append(kept, k)
		}
	}
	return kept
}

// take hands a pass of policy its state (nil when there is none, or its
// basis is not basis), whether the pass may build on it alone (false while
// the policy is over its key limit: a full pass may still reuse its
// entries), the keys changed since the last pass and the bundle Secrets
// someone else changed.
func (s *shardStates) take(policy types.NamespacedName, basis string) (st *shardState, valid bool, changed, rewrite map[string]struct{}, since time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed, rewrite, since = s.dirty[policy], s.rewrite[policy], s.since[policy]
	delete(s.dirty, policy)
	delete(s.rewrite, policy)
	delete(s.since, policy)
	st = s.m[policy]
	if st != nil && st.basis != basis {
		st = nil
	}
	return st, st != nil && !st.limited, changed, rewrite, since
}

// changedBundleSecret notes that someone else changed (or deleted) bundle
// Secret name of policy: its next pass encodes that shard again and writes
// it where it differs.
func (s *shardStates) changedBundleSecret(policy types.NamespacedName, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rewrite == nil {
		s.rewrite = map[types.NamespacedName]map[string]struct{}{}
	}
	if s.rewrite[policy] == nil {
		s.rewrite[policy] = map[string]struct{}{}
	}
	s.rewrite[policy][name] = struct{}{}
	s.noteSince(policy)
}

// noteSince records now as the time of the policy's oldest change not taken
// yet, unless an older one is pending; s.mu is held.
func (s *shardStates) noteSince(policy types.NamespacedName) {
	if _, ok := s.since[policy]; ok {
		return
	}
	if s.since == nil {
		s.since = map[types.NamespacedName]time.Time{}
	}
	s.since[policy] = time.Now()
}

// keep stores the state a pass of policy leaves; nil drops it (the next
// pass is a full one).
func (s *shardStates) keep(policy types.NamespacedName, st *shardState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == nil {
		delete(s.m, policy)
		return
	}
	if s.m == nil {
		s.m = map[types.NamespacedName]*shardState{}
	}
	s.m[policy] = st
}

// touch notes that ApiKey name of policy changed (itself or its
// credentials Secret).
func (s *shardStates) touch(policy types.NamespacedName, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Noted even while the policy has no state: a full pass may be running,
	// which read the cache before this change.
	if s.dirty == nil {
		s.dirty = map[types.NamespacedName]map[string]struct{}{}
	}
	d := s.dirty[policy]
	if d == nil {
		d = map[string]struct{}{}
		s.dirty[policy] = d
	}
	d[name] = struct{}{}
	s.noteSince(policy)
}

// forget drops a policy's state (deleted, or no longer sharded).
func (s *shardStates) forget(policy types.NamespacedName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, policy)
	delete(s.dirty, policy)
	delete(s.rewrite, policy)
	delete(s.since, policy)
}

// shardBasis is what every shard of a policy depends on besides its keys.
func shardBasis(p *keygatev1.TokenPolicy, count int, hashKey []byte) string {
	return fmt.Sprintf("%s/%d/%d/%d/%s/%d", p.UID, p.Generation, count, maxApiKeys(p), hashKeyID(hashKey), maxBundleBytes)
}

// newKeyState is the state of an eligible key: its entry (when its
// credentials Secret s makes one; c and digest as credsPass.read returns
// them) and its next wake time after now.
func newKeyState(key *keygatev1.ApiKey, s *corev1.Secret, c *credentials, digest, hashKey []byte, count int, now time.Time) (*keyState, error) {
	ks := &keyState{name: key.Name, created: key.CreationTimestamp.Time, shard: -1, keyVersion: key.ResourceVersion}
	if s != nil {
		ks.secretVersion = s.ResourceVersion
	}
	if t, ok := earliest(now, keyWakeups(key, c)...); ok {
		ks.wake = t
	}
	k, ok := bundleKey(key, s, c, digest, hashKey, now)
	if !ok {
		return ks, nil
	}
	entry, err := json.Marshal(&k)
	if err != nil {
		return nil, fmt.Errorf("encode bundle entry of ApiKey %q: %w", key.Name, err)
	}
	ks.keyID, ks.entry, ks.shard = k.KeyID, entry, bundle.ShardOf(k.KeyID, count)
	return ks, nil
}

// readKeyState reads ApiKey name of the pass's policy and its credentials
// Secret from the cache, as a full pass would; nil when the key is not
// eligible (gone, another policy's, being deleted, disabled, expired).
func (r *TokenPolicyReconciler) readKeyState(ctx context.Context, pass *policyPass, name string, count int) (*keyState, error) {
	p := pass.policy
	key := &keygatev1.ApiKey{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: name}, key, client.UnsafeDisableDeepCopy); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read ApiKey %q: %w", name, err)
	}
	if key.Spec.PolicyRef.Name != p.Name || !key.DeletionTimestamp.IsZero() {
		return nil, nil
	}
	if _, ok := localVerdict(key, p, pass.now); !ok {
		return nil, nil
	}
	s, err := r.readCredentialsSecret(ctx, p, key, &corev1.Secret{})
	if err != nil {
		return nil, err
	}
	return keyStateOf(key, s, pass, count)
}

// readCredentialsSecret reads the credentials Secret of key (of policy p)
// from the cache into into, read only (shared with the cache); nil when
// there is none or it is not labelled as a credentials Secret of p.
func (r *TokenPolicyReconciler) readCredentialsSecret(ctx context.Context, p *keygatev1.TokenPolicy, key *keygatev1.ApiKey, into *corev1.Secret) (*corev1.Secret, error) {
	if err := r.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: credentialsSecretName(key)}, into, client.UnsafeDisableDeepCopy); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read credentials Secret of ApiKey %q: %w", key.Name, err)
	}
	if into.Labels[keygatev1.LabelTokenPolicy] != p.Name || into.Labels[keygatev1.LabelApiKey] == "" {
		return nil, nil
	}
	return into, nil
}

// keyStateOf parses credentials Secret s (nil: none) of an eligible key and
// makes its state. The shard state keeps each key's entry for as long as its
// ApiKey and Secret stay at the same versions, so the credentials memo
// (credsMemo) of the unsharded bundle is not needed here.
func keyStateOf(key *keygatev1.ApiKey, s *corev1.Secret, pass *policyPass, count int) (*keyState, error) {
	var c *credentials
	var digest []byte
	if s != nil {
		read := readCredentials(s)
		c, digest = &read, bundle.Digest(pass.signing.HashKey, read.Secret)
	}
	return newKeyState(key, s, c, digest, pass.signing.HashKey, count, pass.now)
}

// fullShardState reads every ApiKey and credentials Secret of the policy
// and builds its state, every shard to be written; a key whose ApiKey and
// Secret are at the versions prev (a state of the same basis, or nil) saw
// keeps its entry. limitCut is the last key within spec.maxApiKeys when more
// are eligible (nil otherwise; only its name and creation time are set);
// such a state is not kept, as the limit concerns every shard.
//
// The ApiKeys are read a bucket at a time and each Secret by name, into one
// object: at 100,000 keys, lists of all the policy's ApiKeys and Secrets
// (each item copied into the list) were some 110 MB held at once, of some
// 300 MB of garbage a pass (BenchmarkBundlePass). What is kept of each
// eligible key meanwhile is its state and its place in the admission order.
func (r *TokenPolicyReconciler) fullShardState(ctx context.Context, pass *policyPass, count int, basis string, prev *shardState) (*shardState, *keygatev1.ApiKey, error) {
	p := pass.policy
	var eligible []*keyState
	secret := &corev1.Secret{}
	err := eachApiKeyOfPolicy(ctx, r, p.Namespace, p.Name, func(key *keygatev1.ApiKey) error {
		if !key.DeletionTimestamp.IsZero() {
			return nil
		}
		if _, ok := localVerdict(key, p, pass.now); !ok {
			return nil
		}
		s, err := r.readCredentialsSecret(ctx, p, key, secret)
		if err != nil {
			return err
		}
		if prev != nil {
			if old := prev.keys[key.Name]; old != nil && old.reusable(key, s, pass.now) {
				eligible = append(eligible, old)
				return nil
			}
		}
		ks, err := keyStateOf(key, s, pass, count)
		if err != nil {
			return err
		}
		eligible = append(eligible, ks)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(eligible, byCreation)
	st := newShardState(basis, pass.now, count)
	r.creds.forget(client.ObjectKeyFromObject(p)) // a policy that was unsharded
	limit := maxApiKeys(p)
	for _, ks := range eligible[:min(limit, len(eligible))] {
		st.set(ks.name, ks)
	}
	var limitCut *keygatev1.ApiKey
	if len(eligible) > limit {
		last := eligible[limit-1]
		limitCut = &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Name: last.name, CreationTimestamp: metav1.NewTime(last.created)}}
	}
	return st, limitCut, nil
}

// encodeShard encodes the shard document of the longest prefix of keys (in
// admission order) that fits in limit bytes, its keys sorted by key ID, and
// returns how many it holds: the bytes json.Marshal gives for the
// bundle.Shard, built from the keys' encoded entries.
func encodeShard(doc *bundle.Shard, keys []*keyState, limit int) (int, []byte, error) {
	doc.Keys = []bundle.Key{}
	empty, err := json.Marshal(doc)
	if err != nil {
		return 0, nil, fmt.Errorf("encode bundle shard: %w", err)
	}
	const tail = `]}`
	if !bytes.HasSuffix(empty, []byte(`[`+tail)) {
		return 0, nil, fmt.Errorf("encode bundle shard: unexpected document %q", empty)
	}
	head := empty[:len(empty)-len(tail)]
	n, _ := prefixFit(len(empty), limit, len(keys), func(i int) (int, error) { return len(keys[i].entry), nil })
	carried := slices.Clone(keys[:n])
	size := len(empty) + max(n-1, 0)
	for _, k := range carried {
		size += len(k.entry)
	}
	slices.SortFunc(carried, func(a, b *keyState) int { return cmp.Compare(a.keyID, b.keyID) })
	out := make([]byte, 0, size)
	out = append(out, head...)
	for i, k := range carried {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, k.entry...)
	}
	out = append(out, tail...)
	if n == 0 && len(out) > limit {
		return 0, nil, fmt.Errorf("empty bundle shard is %d bytes, over %d: %w", len(out), limit, errBundleTooLarge)
	}
	return n, out, nil
}

// shardLabel is the label value of shard i.
func shardLabel(i int) map[string]string {
	return map[string]string{bundle.LabelShard: strconv.Itoa(i)}
}

// byCreation orders keys as the bundle does: older first, then by name.
func byCreation(a, b *keyState) int {
	switch {
	case orderBefore(a.created, a.name, b.created, b.name):
		return -1
	case orderBefore(b.created, b.name, a.created, a.name):
		return 1
	}
	return 0
}
