package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// shardsOf reads a policy's v2 index and its shards; the index is nil when
// the bundle is v1.
func shardsOf(g Gomega, ns, policy string) (*bundle.Bundle, map[string]*corev1.Secret) {
	index, _ := bundleOf(g, ns, policy)
	if index.Version != bundle.FormatVersionV2 {
		return nil, nil
	}
	out := map[string]*corev1.Secret{}
	for _, name := range index.Shards {
		s := &corev1.Secret{}
		g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s)).To(Succeed())
		out[name] = s
	}
	return index, out
}

// shardLabelled lists the names of the Secrets labelled as bundle shards of policy.
func shardLabelled(g Gomega, ns, policy string) []string {
	list := &corev1.SecretList{}
	g.Expect(k8sClient.List(context.Background(), list, client.InNamespace(ns),
		client.MatchingLabels{keygatev1.LabelTokenPolicy: policy}, client.HasLabels{bundle.LabelShard})).To(Succeed())
	var out []string
	for _, s := range list.Items {
		out = append(out, s.Name)
	}
	return out
}

// A policy whose maxApiKeys is above bundle.KeysPerShard publishes a v2
// bundle: an index naming the shards, each key in the shard its key ID
// hashes to, Ready only once that shard carries its current secret. One
// key's change rewrites its shard only; a new shard count writes new shard
// Secrets and deletes the old ones after the index names the new ones; a
// policy small enough goes back to one v1 bundle.
func TestShardedBundle(t *testing.T) {
	g := NewWithT(t)
	withKeysPerShard(t, 4)
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p", withMaxApiKeys(12)))
	var names []string
	for i := range 10 {
		name := fmt.Sprintf("k%02d", i)
		names = append(names, name)
		create(t, newApiKey(ns, name, "p"))
	}
	// inShards checks that every key not disabled is Ready and carried, at
	// its current secret, by the shard of count its key ID hashes to.
	inShards := func(count int) {
		g.Eventually(func(g Gomega) {
			index, shards := shardsOf(g, ns, "p")
			g.Expect(index).NotTo(BeNil(), "a v2 index")
			g.Expect(index.Shards).To(Equal(bundle.ShardNames("p", count)))
			var docs []*bundle.Shard
			for i, name := range index.Shards {
				doc, err := bundle.ParseShard(shards[name].Data[bundle.SecretDataKey])
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(doc.Matches(index, i)).To(BeTrue())
				g.Expect(shards[name].Labels).To(HaveKeyWithValue(bundle.LabelShard, fmt.Sprint(i)))
				docs = append(docs, doc)
			}
			all, err := bundle.Assemble(index, docs)
			g.Expect(err).NotTo(HaveOccurred())
			for _, name := range names {
				key := getApiKey(g, ns, name)
				if key.Spec.Disabled {
					g.Expect(readyReasonOf(g, ns, name)).To(Equal("False/" + keygatev1.ReasonDisabled))
					continue
				}
				g.Expect(readyReasonOf(g, ns, name)).To(Equal("True/Ready"), "ApiKey %s", name)
				c, _ := getCreds(g, ns, name+"-credentials")
				place := bundle.ShardOf(c.KeyID, count)
				g.Expect(docs[place].Keys).To(ContainElement(HaveField("KeyID", c.KeyID)), "ApiKey %s in shard %d", name, place)
				g.Expect(all.Carries(c.KeyID, bundle.Digest(index.HashKey, c.Secret))).To(BeTrue())
			}
			g.Expect(shardLabelled(g, ns, "p")).To(ConsistOf(index.Shards), "the shards of other counts are deleted")
		}, timeout, interval).Should(Succeed())
	}
	inShards(4)

	// Disabling one key rewrites its shard and nothing else.
	_, before := shardsOf(g, ns, "p")
	indexBefore := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: bundle.SecretName("p")}, indexBefore)).To(Succeed())
	off := getApiKey(g, ns, "k03")
	c, _ := getCreds(g, ns, "k03-credentials")
	place := bundle.ShardName("p", 4, bundle.ShardOf(c.KeyID, 4))
	off.Spec.Disabled = true
	g.Expect(k8sClient.Update(context.Background(), off)).To(Succeed())
	g.Eventually(func(g Gomega) []bundle.Key {
		_, shards := shardsOf(g, ns, "p")
		doc, err := bundle.ParseShard(shards[place].Data[bundle.SecretDataKey])
		g.Expect(err).NotTo(HaveOccurred())
		return doc.Keys
	}, timeout, interval).ShouldNot(ContainElement(HaveField("KeyID", c.KeyID)))
	inShards(4)
	_, after := shardsOf(g, ns, "p")
	for name, s := range after {
		if name != place {
			g.Expect(s.ResourceVersion).To(Equal(before[name].ResourceVersion), "shard %s was rewritten", name)
		}
	}
	indexAfter := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: bundle.SecretName("p")}, indexAfter)).To(Succeed())
	g.Expect(indexAfter.ResourceVersion).To(Equal(indexBefore.ResourceVersion), "the index was rewritten")

	// A larger limit: 8 shards, new Secrets; the 4 old ones go.
	p := &keygatev1.TokenPolicy{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "p"}, p)).To(Succeed())
	p.Spec.MaxApiKeys = 20
	g.Expect(k8sClient.Update(context.Background(), p)).To(Succeed())
	inShards(8)
	for _, name := range bundle.ShardNames("p", 4) {
		err := k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &corev1.Secret{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "old shard %s", name)
	}

	// A limit within one Secret: a v1 bundle again, no shard left.
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "p"}, p)).To(Succeed())
	p.Spec.MaxApiKeys = 4
	g.Expect(k8sClient.Update(context.Background(), p)).To(Succeed())
	g.Eventually(func(g Gomega) {
		b, _ := bundleOf(g, ns, "p")
		g.Expect(b.Version).To(Equal(bundle.FormatVersion))
		g.Expect(b.Keys).To(HaveLen(4))
		g.Expect(shardLabelled(g, ns, "p")).To(BeEmpty())
		ready := 0
		for _, name := range names {
			if readyReasonOf(g, ns, name) == "True/Ready" {
				ready++
			}
		}
		g.Expect(ready).To(Equal(4))
	}, timeout, interval).Should(Succeed())
}

// While a sharded policy's additions are paced, a shard that only gains
// keys waits (the new key stays NotInBundle), but a removal is published at
// once: a disabled key and a deleted key leave their shards within the
// usual time although the pace would hold additions for minutes.
func TestShardAdditionsPacedRemovalsNot(t *testing.T) {
	g := NewWithT(t)
	withKeysPerShard(t, 4)
	savedRate := shardAdditionsBytesPerSecond.Load()
	t.Cleanup(func() { shardAdditionsBytesPerSecond.Store(savedRate) })
	ns := newNamespace(t)
	startManager(t, ns, clock.RealClock{})
	create(t, newPolicy(ns, "p", withMaxApiKeys(8)))
	for _, name := range []string{"k0", "k1", "k2", "k3"} {
		create(t, newApiKey(ns, name, "p"))
	}
	for _, name := range []string{"k0", "k1", "k2", "k3"} {
		waitReason(t, ns, name, "True/Ready")
	}

	// From the next shard write on, additions wait one second per byte
	// written: some minutes.
	shardAdditionsBytesPerSecond.Store(1)
	create(t, newApiKey(ns, "k4", "p"))
	waitReason(t, ns, "k4", "True/Ready") // the first addition after a quiet time goes at once
	create(t, newApiKey(ns, "k5", "p"))
	// A new key is NotInBundle only when no bundle carried it within
	// newKeyStatusDelay: its shard waited.
	waitReasonWithin(t, ns, "k5", "False/"+keygatev1.ReasonNotInBundle, newKeyStatusDelay+timeout)
	c5, _ := getCreds(g, ns, "k5-credentials")
	g.Expect(shardKeyIDs(g, ns, bundle.ShardName("p", 2, bundle.ShardOf(c5.KeyID, 2)))).NotTo(ContainElement(c5.KeyID))

	// A disable and a delete are published at once, pace or not.
	c0, _ := getCreds(g, ns, "k0-credentials")
	c1, _ := getCreds(g, ns, "k1-credentials")
	k0 := getApiKey(g, ns, "k0")
	k0.Spec.Disabled = true
	g.Expect(k8sClient.Update(context.Background(), k0)).To(Succeed())
	g.Expect(k8sClient.Delete(context.Background(), getApiKey(g, ns, "k1"))).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(shardKeyIDs(g, ns, bundle.ShardName("p", 2, bundle.ShardOf(c0.KeyID, 2)))).NotTo(ContainElement(c0.KeyID))
		g.Expect(shardKeyIDs(g, ns, bundle.ShardName("p", 2, bundle.ShardOf(c1.KeyID, 2)))).NotTo(ContainElement(c1.KeyID))
	}, timeout, interval).Should(Succeed())
	waitReason(t, ns, "k0", "False/"+keygatev1.ReasonDisabled)
}

// shardKeyIDs lists the key IDs a shard Secret carries.
func shardKeyIDs(g Gomega, ns, name string) []string {
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s)).To(Succeed())
	doc, err := bundle.ParseShard(s.Data[bundle.SecretDataKey])
	g.Expect(err).NotTo(HaveOccurred())
	var ids []string
	for _, k := range doc.Keys {
		ids = append(ids, k.KeyID)
	}
	return ids
}

// waitReasonWithin is waitReason with its own limit.
func waitReasonWithin(t *testing.T, ns, name, want string, limit time.Duration) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) string { return readyReasonOf(g, ns, name) }, limit, interval).Should(Equal(want), "ApiKey %s", name)
}
