package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// shardWriters is how many shard Secrets one pass writes at once.
const shardWriters = 8

// ensureShardedBundle publishes a v2 bundle from the policy's shard state
// (shardStates): after a full pass every shard is encoded, after an
// incremental one only the shards whose keys changed.
func (r *TokenPolicyReconciler) ensureShardedBundle(ctx context.Context, pass *policyPass, b *bundle.Bundle, count int) (shardsPublished, error) {
	p := pass.policy
	policyKey := client.ObjectKeyFromObject(p)
	basis := shardBasis(p, count, pass.signing.HashKey)
	prev, valid, changed, rewrite, since := r.shardStates.take(policyKey, basis)
	tr := &pass.trace
	*tr = passTrace{start: tr.start, kind: "incremental", changed: len(changed)}
	if !since.IsZero() {
		tr.waited = time.Since(since)
	}
	st := prev
	// Reading every key at once costs less than reading most of them one by
	// one (a resync of the cache names them all).
	switch {
	case !r.incremental:
		tr.why = "not incremental"
	case prev == nil:
		tr.why = "no state of this basis"
	case !valid:
		tr.why = "over the key limit"
	case pass.now.Sub(st.built) >= fullPassEvery:
		tr.why = "periodic"
	case len(changed) > len(st.keys)/4+64:
		tr.why = "many changes"
	}
	if tr.why != "" {
		st = nil
	}
	if st != nil {
		for _, name := range st.due(pass.now) {
			if changed == nil {
				changed = map[string]struct{}{}
			}
			changed[name] = struct{}{}
		}
		for name := range changed {
			k, err := r.readKeyState(ctx, pass, name, count)
			if err != nil {
				r.shardStates.keep(policyKey, nil)
				return shardsPublished{}, err
			}
			st.set(name, k)
		}
		if len(st.keys) > maxApiKeys(p) {
			st = nil // over the limit: the admission order decides, over every shard
			tr.why = "now over the key limit"
		}
	}
	if st != nil {
		for i, name := range bundle.ShardNames(p.Name, count) {
			if _, ok := rewrite[name]; ok {
				st.shards[i].dirty = true
			}
		}
	}
	var limitCut *keygatev1.ApiKey
	if st == nil {
		tr.kind = "full"
		var err error
		if st, limitCut, err = r.fullShardState(ctx, pass, count, basis, prev); err != nil {
			r.shardStates.keep(policyKey, nil)
			return shardsPublished{}, err
		}
	}
	tr.read = time.Since(tr.start)
	st.limited = limitCut != nil
	if r.incremental {
		r.shardStates.keep(policyKey, st)
	}
	return r.publishSharded(ctx, p, b, st, limitCut, tr)
}

// shardsPublished is what a v2 bundle write put in front of the sidecars.
type shardsPublished struct {
	// kept are the keys the shards carry; over those left out for size.
	kept, over int
	// names are the shard Secrets.
	names []string
	// wake is when an entry next changes by itself.
	wake time.Time
	// retryAfter is when shards left waiting by the additions' pace are due.
	retryAfter time.Duration
}

// publishSharded writes a v2 bundle: each entry in the shard its key ID
// hashes to (the oldest of a shard that fit, when not all do), the shards
// first and the index last, so that an index never names a shard that is
// not written yet. Only the shards of st marked dirty are encoded and
// written; the index changes with the policy, the signing keys, the shard
// count or the limit cut. The shard Secrets of another count are deleted
// afterwards (deleteStaleShards). A shard whose only change is keys added
// waits while the policy's additions are paced (additionPacer) and stays
// dirty; every other change is written at once.
func (r *TokenPolicyReconciler) publishSharded(ctx context.Context, p *keygatev1.TokenPolicy, b *bundle.Bundle,
	st *shardState, limitCut *keygatev1.ApiKey, trace *passTrace) (shardsPublished, error) {
	count := len(st.shards)
	names := bundle.ShardNames(p.Name, count)
	hashKeyID := bundle.HashKeyID(b.HashKey)
	policyKey := client.ObjectKeyFromObject(p)
	wait := r.pacer.wait(policyKey)
	var (
		pub         shardsPublished
		written     atomic.Int64 // bytes
		shardsWrote atomic.Int64 // shards
	)
	// The shards are independent of each other: written side by side, a
	// pass costs about one round trip however many shards changed. One
	// write failing does not cancel the others: a write cancelled after it
	// was sent may still be applied, unrecorded (ownWrites), and the next
	// pass, reading a cache that has not seen it, would conflict (at
	// 100,000 keys such conflicts fed each other, 34 in one run).
	var g errgroup.Group
	g.SetLimit(shardWriters)
	for s, sh := range st.shards {
		if !sh.dirty {
			continue
		}
		// Checked before the shard is ordered and encoded: while keys
		// arrive in bulk, most passes find every shard waiting, and encode
		// none (ordering them all each pass was some 9 % of the manager's
		// allocations at 100,000 keys).
		if wait > 0 {
			if held, ok := r.pacer.onlyAdds(ctx, r.Client, p, names[s], sh.members); ok {
				sh.kept = held
				pub.retryAfter = wait
				trace.paced++
				continue
			}
		}
		keys := sh.ordered()
		trace.encoded++
		doc := &bundle.Shard{Version: bundle.ShardFormatVersion, Count: count, Index: s, HashKeyID: hashKeyID}
		fit, data, err := encodeShard(doc, keys, maxBundleBytes)
		if err != nil {
			return shardsPublished{}, fmt.Errorf("shard %d: %w", s, err)
		}
		cuts := cutoffs{}
		switch {
		case fit == len(keys):
		case fit == 0:
			cuts.size = &cutoff{}
		default:
			cuts.size = &cutoff{created: keys[fit-1].created.UTC(), name: keys[fit-1].name}
		}
		annotations := cuts.annotations()
		g.Go(func() error {
			rv, wrote, err := r.writeBundle(ctx, p, names[s], data, annotations, shardLabel(s))
			if err != nil {
				return err
			}
			r.pacer.record(types.NamespacedName{Namespace: p.Namespace, Name: names[s]}, rv, keys[:fit])
			if wrote {
				written.Add(int64(len(data)))
				shardsWrote.Add(1)
			}
			sh.dirty, sh.kept, sh.over = false, fit, len(keys)-fit
			return nil
		})
	}
	err := g.Wait()
	trace.written, trace.bytes = int(shardsWrote.Load()), written.Load()
	r.pacer.wrote(policyKey, written.Load())
	if err != nil {
		return shardsPublished{}, err
	}
	for _, sh := range st.shards {
		pub.kept += sh.kept
		pub.over += sh.over
	}
	b.Version, b.Shards, b.Keys = bundle.FormatVersionV2, names, nil
	if err := b.Validate(); err != nil {
		return shardsPublished{}, fmt.Errorf("build bundle index: %w", err)
	}
	data, err := bundle.Marshal(b)
	if err != nil {
		return shardsPublished{}, fmt.Errorf("encode bundle index: %w", err)
	}
	cuts := cutoffs{limit: cutAfter(limitCut)}
	if _, _, err := r.writeBundle(ctx, p, bundle.SecretName(p.Name), data, cuts.annotations(), nil); err != nil {
		return shardsPublished{}, err
	}
	pub.names, pub.wake = names, st.wake
	return pub, nil
}

// deleteStaleShards deletes the policy's shard Secrets that the index just
// written does not name (all of them after a v1 bundle). The index no longer
// names them, so no sidecar reads them.
func (r *TokenPolicyReconciler) deleteStaleShards(ctx context.Context, p *keygatev1.TokenPolicy, current []string) error {
	// Shards are only ever left behind by a change of their set; listing
	// the policy's Secrets every pass cost a scan of 100,000 credentials
	// Secrets in the cache at 100,000 keys.
	policyKey := client.ObjectKeyFromObject(p)
	set := strings.Join(current, ",")
	if last, ok := r.shardSets.Load(policyKey); ok && last == set {
		return nil
	}
	secrets := &corev1.SecretList{}
	if err := r.List(ctx, secrets, client.InNamespace(p.Namespace), client.MatchingLabels{keygatev1.LabelTokenPolicy: p.Name},
		client.HasLabels{bundle.LabelShard}, client.UnsafeDisableDeepCopy); err != nil {
		return fmt.Errorf("list bundle shards of TokenPolicy %q: %w", p.Name, err)
	}
	for i := range secrets.Items {
		s := &secrets.Items[i]
		if slices.Contains(current, s.Name) || !metav1.IsControlledBy(s, p) {
			continue
		}
		stale := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name}}
		if err := r.Delete(ctx, stale, client.Preconditions{UID: &s.UID}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete stale bundle shard %q: %w", s.Name, err)
		}
		r.ownWrites.Delete(client.ObjectKeyFromObject(stale))
		r.pacer.forget(client.ObjectKeyFromObject(stale))
	}
	r.shardSets.Store(policyKey, set)
	return nil
}
