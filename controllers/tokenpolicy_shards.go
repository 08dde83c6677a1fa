package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

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

// publishSharded writes a v2 bundle: each entry in the shard its key ID
// hashes to (the oldest of a shard that fit, when not all do), the shards
// first and the index last, so that an index never names a shard that is
// not written yet. A change to one key rewrites only its shard; the index
// changes with the policy, the signing keys, the shard count or the limit
// cut. The shard Secrets of another count are deleted afterwards
// (deleteStaleShards). A shard whose only change is keys added waits while
// the policy's additions are paced (additionPacer); every other change is
// written at once. retryAfter is when the waiting shards are due.
func (r *TokenPolicyReconciler) publishSharded(ctx context.Context, p *keygatev1.TokenPolicy, b *bundle.Bundle,
	entries []bundle.Key, owners []*keygatev1.ApiKey, limitCut *keygatev1.ApiKey, count int) (published, error) {
	perShard := make([][]int, count) // indexes into entries, in admission order
	for i := range entries {
		s := bundle.ShardOf(entries[i].KeyID, count)
		perShard[s] = append(perShard[s], i)
	}
	names := bundle.ShardNames(p.Name, count)
	hashKeyID := bundle.HashKeyID(b.HashKey)
	policyKey := client.ObjectKeyFromObject(p)
	wait := r.pacer.wait(policyKey)
	var (
		kept    []*keygatev1.ApiKey
		pub     published
		written atomic.Int64 // bytes
	)
	// The shards are independent of each other: written side by side, a
	// pass costs about one round trip however many shards changed. One
	// write failing does not cancel the others: a write cancelled after it
	// was sent may still be applied, unrecorded (ownWrites), and the next
	// pass, reading a cache that has not seen it, would conflict (at
	// 100,000 keys such conflicts fed each other, 34 in one run).
	var g errgroup.Group
	g.SetLimit(shardWriters)
	for s, idx := range perShard {
		shardEntries := make([]bundle.Key, len(idx))
		shardOwners := make([]*keygatev1.ApiKey, len(idx))
		for j, i := range idx {
			shardEntries[j], shardOwners[j] = entries[i], owners[i]
		}
		// Checked before the shard is encoded: while keys arrive in bulk,
		// most passes find every shard waiting, and encode none.
		if wait > 0 {
			if held, ok := r.pacer.onlyAdds(ctx, r.Client, p, names[s], shardEntries); ok {
				for _, o := range shardOwners {
					if _, in := held[o.Name]; in {
						kept = append(kept, o)
					}
				}
				pub.retryAfter = wait
				continue
			}
		}
		doc := &bundle.Shard{Version: bundle.ShardFormatVersion, Count: count, Index: s, HashKeyID: hashKeyID}
		fit, data, err := packKeys(shardEntries, maxBundleBytes, func(keys []bundle.Key) ([]byte, error) {
			doc.Keys = keys
			return json.Marshal(doc)
		})
		if err != nil {
			return published{}, fmt.Errorf("shard %d: %w", s, err)
		}
		carried := shardEntries[:fit]
		annotations := cutoffs{size: sizeCut(shardOwners, fit, len(shardOwners))}.annotations()
		g.Go(func() error {
			rv, wrote, err := r.writeBundle(ctx, p, names[s], data, annotations, map[string]string{bundle.LabelShard: strconv.Itoa(s)})
			if err != nil {
				return err
			}
			r.pacer.record(types.NamespacedName{Namespace: p.Namespace, Name: names[s]}, rv, carried)
			if wrote {
				written.Add(int64(len(data)))
			}
			return nil
		})
		kept = append(kept, shardOwners[:fit]...)
	}
	err := g.Wait()
	r.pacer.wrote(policyKey, written.Load())
	if err != nil {
		return published{}, err
	}
	b.Version, b.Shards, b.Keys = bundle.FormatVersionV2, names, nil
	if err := b.Validate(); err != nil {
		return published{}, fmt.Errorf("build bundle index: %w", err)
	}
	data, err := bundle.Marshal(b)
	if err != nil {
		return published{}, fmt.Errorf("encode bundle index: %w", err)
	}
	cuts := cutoffs{limit: cutAfter(limitCut)}
	if _, _, err := r.writeBundle(ctx, p, bundle.SecretName(p.Name), data, cuts.annotations(), nil); err != nil {
		return published{}, err
	}
	pub.kept, pub.shards = kept, names
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
