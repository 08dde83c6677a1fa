package controllers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// countingMem counts the Lists made through a memCache.
type countingMem struct {
	*memCache
	lists int
}

func (c *countingMem) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	c.lists++
	return c.memCache.List(ctx, list, opts...)
}

// An incremental bundle pass (only the ApiKeys the watches named since the
// previous pass are read, only their shards encoded) publishes exactly what
// a full pass would: after every round of random changes (keys added,
// disabled, enabled, deleted, rotated with a grace period, edited by hand,
// given new permissions, expiring, over the policy's limit and back, shards
// over the size limit) and clock steps, a full pass by a fresh reconciler
// finds nothing to write and the same status. An incremental pass lists
// nothing.
func TestIncrementalPassEqualsFullPass(t *testing.T) {
	g := NewWithT(t)
	withKeysPerShard(t, 50) // 16 shards for 650 keys
	savedRate, savedMax := shardAdditionsBytesPerSecond.Load(), maxBundleBytes
	t.Cleanup(func() {
		maxBundleBytes = savedMax
		shardAdditionsBytesPerSecond.Store(savedRate)
	})
	maxBundleBytes = 6 << 10                    // some 26 keys a shard of about 37: shards are cut
	shardAdditionsBytesPerSecond.Store(1 << 62) // no pace: a full pass would write what waits

	r, m, pass := benchPolicy(t, 0)
	counted := &countingMem{memCache: m}
	r.Client = counted
	pass.policy.Spec.MaxApiKeys = 596
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(15, 2026))
	now := pass.now
	names := []string{}
	add := func(opts ...func(*keygatev1.ApiKey)) {
		name := fmt.Sprintf("k%05d", m.rv) // unique: the resourceVersion only grows
		m.addKey(t, name, now.Add(-time.Duration(rng.IntN(3600))*time.Second), now, opts...)
		names = append(names, name)
		r.touchApiKey("p", m.keys[m.keyIndex[name]])
	}
	for range 600 {
		add()
	}
	live := func() []string {
		var out []string
		for _, n := range names {
			if _, ok := m.keyIndex[n]; ok {
				out = append(out, n)
			}
		}
		return out
	}
	pick := func() string { l := live(); return l[rng.IntN(len(l))] }
	touchSecret := func(name string) { r.touchCredentials("p", m.secrets[name+"-credentials"]) }
	statusOf := func(p *keygatev1.TokenPolicy) string {
		c := meta.FindStatusCondition(p.Status.Conditions, keygatev1.ConditionReady)
		g.Expect(c).NotTo(BeNil())
		return fmt.Sprintf("%d %s %s", p.Status.ApiKeys, c.Reason, c.Message)
	}

	full, limited, cut, prevLimited := 0, 0, 0, false
	for round := range 60 {
		for range 1 + rng.IntN(6) {
			switch op := rng.IntN(9); op {
			case 0, 1: // a new key, now and then one that expires soon
				if rng.IntN(3) == 0 {
					add(withExpiry(now.Add(time.Duration(1+rng.IntN(20)) * time.Second)))
				} else {
					add()
				}
			case 2: // disabled or enabled again
				name := pick()
				i := m.keyIndex[name]
				m.updateKey(i, func(k *keygatev1.ApiKey) { k.Spec.Disabled = !k.Spec.Disabled })
				r.touchApiKey("p", m.keys[i])
			case 3: // deleted, with its Secret
				name := pick()
				key := m.keys[m.keyIndex[name]]
				m.deleteKey(name)
				r.touchApiKey("p", key)
			case 4: // new permissions
				name := pick()
				i := m.keyIndex[name]
				m.updateKey(i, func(k *keygatev1.ApiKey) {
					k.Spec.Permissions = append(k.Spec.Permissions, keygatev1.Permission(fmt.Sprintf("p:%d", round)))
				})
				r.touchApiKey("p", m.keys[i])
			case 5: // rotated: a new secret, the previous one in a short grace period
				name := pick()
				m.updateSecret(name, func(s *corev1.Secret) {
					c := readCredentials(s)
					next, err := newSecret()
					g.Expect(err).NotTo(HaveOccurred())
					prev := &previousSecret{Digest: bundle.Digest(pass.signing.HashKey, c.Secret), Version: c.Version,
						ExpiresAt: now.Add(time.Duration(1+rng.IntN(20)) * time.Second), HashKeyID: hashKeyID(pass.signing.HashKey)}
					writeCredentials(s, credentials{KeyID: c.KeyID, Secret: next, Version: c.Version + 1, RotatedAt: now, Previous: prev})
				})
				touchSecret(name)
			case 6: // edited by hand: no longer intact
				name := pick()
				m.updateSecret(name, func(s *corev1.Secret) {
					s.Data[CredentialsSecret] = []byte(base64.StdEncoding.EncodeToString([]byte(name)))
				})
				touchSecret(name)
			case 7: // time passes: expiries and grace periods end unannounced
				now = now.Add(time.Duration(rng.IntN(8)) * time.Second)
			case 8: // nothing changed, yet the watch says so (a resync)
				r.touchApiKey("p", m.keys[m.keyIndex[pick()]])
			}
		}
		pass.now = now
		lists := counted.lists
		_, err := r.ensureBundle(ctx, pass)
		g.Expect(err).NotTo(HaveOccurred())
		if counted.lists > lists {
			full++
		}
		eligible := 0
		for _, k := range m.keys {
			if _, ok := localVerdict(k, pass.policy, now); ok {
				eligible++
			}
		}
		over := eligible > int(pass.policy.Spec.MaxApiKeys)
		switch {
		case over:
			limited++
			g.Expect(counted.lists).To(BeNumerically(">", lists), "round %d: over the limit, a full pass", round)
		case round > 0 && !prevLimited:
			g.Expect(counted.lists).To(Equal(lists), "round %d: an incremental pass lists nothing", round)
		}
		prevLimited = over

		// A fresh reconciler's full pass finds the bundle as it must be.
		fresh := &TokenPolicyReconciler{Client: m, Clock: r.Clock}
		p := pass.policy.DeepCopy()
		writes := m.writes
		_, err = fresh.ensureBundle(ctx, &policyPass{policy: p, signing: pass.signing, now: now})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(m.writes).To(Equal(writes), "round %d: the full pass rewrote shards", round)
		g.Expect(statusOf(pass.policy)).To(Equal(statusOf(p)), "round %d", round)
		for _, s := range m.secrets {
			if s.Annotations[annotationSizeCutoff] != "" {
				cut++
				break
			}
		}
	}
	t.Logf("%d rounds: %d full passes (%d over the limit), %d with a shard cut for size", 60, full, limited, cut)
	g.Expect(limited).To(BeNumerically(">", 0), "some passes are over the limit")
	g.Expect(full-limited).To(BeNumerically("<", 60-full), "the others are mostly incremental")
	g.Expect(cut).To(BeNumerically(">", 0), "some shard is cut for size")
}

// encodeShard gives the bytes json.Marshal gives for the same shard.
func TestEncodeShardMatchesMarshal(t *testing.T) {
	g := NewWithT(t)
	now := time.Now().UTC().Truncate(time.Second)
	var keys []*keyState
	var entries []bundle.Key
	for i := range 5 {
		k := bundle.Key{Name: fmt.Sprintf("k%d", i), KeyID: fmt.Sprintf("apk-%d", 9-i),
			Secrets:     []bundle.SecretDigest{{Digest: []byte{byte(i)}, Version: 1}},
			Permissions: []string{"a<b>&c"}}
		if i == 2 {
			exp := now.Add(time.Hour)
			k.ExpiresAt = &exp
		}
		entry, err := json.Marshal(&k)
		g.Expect(err).NotTo(HaveOccurred())
		keys = append(keys, &keyState{name: k.Name, created: now.Add(time.Duration(i) * time.Second), keyID: k.KeyID, entry: entry})
		entries = append(entries, k)
	}
	for _, n := range []int{0, 1, 5} {
		doc := &bundle.Shard{Version: bundle.ShardFormatVersion, Count: 8, Index: 3, HashKeyID: "00ff"}
		fit, got, err := encodeShard(doc, keys[:n], 1<<20)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(fit).To(Equal(n))
		want, err := packShardLikeBefore(entries[:n])
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(got)).To(Equal(string(want)))
	}
	// Cut for size: the longest prefix in admission order that fits.
	doc := &bundle.Shard{Version: bundle.ShardFormatVersion, Count: 8, Index: 3, HashKeyID: "00ff"}
	_, all, err := encodeShard(doc, keys, 1<<20)
	g.Expect(err).NotTo(HaveOccurred())
	fit, got, err := encodeShard(doc, keys, len(all)-1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fit).To(Equal(4))
	want, _ := packShardLikeBefore(entries[:4])
	g.Expect(string(got)).To(Equal(string(want)))
	g.Expect(len(got)).To(BeNumerically("<", len(all)-1))
}

// packShardLikeBefore is the shard as json.Marshal encodes it, keys sorted by key ID.
func packShardLikeBefore(entries []bundle.Key) ([]byte, error) {
	doc := &bundle.Shard{Version: bundle.ShardFormatVersion, Count: 8, Index: 3, HashKeyID: "00ff"}
	_, data, err := packKeys(entries, 1<<20, func(keys []bundle.Key) ([]byte, error) {
		doc.Keys = keys
		return json.Marshal(doc)
	})
	return data, err
}

// While the additions' pace holds shards back, their new keys wait unbundled
// (a retry is scheduled) but are not "too large": the TokenPolicy stays
// Ready. A removal in a waiting shard is written at once, with its waiting
// additions.
func TestPacedAdditionsLeavePolicyReady(t *testing.T) {
	g := NewWithT(t)
	withKeysPerShard(t, 10) // 4 shards for 40 keys
	savedRate := shardAdditionsBytesPerSecond.Load()
	t.Cleanup(func() { shardAdditionsBytesPerSecond.Store(savedRate) })
	shardAdditionsBytesPerSecond.Store(1) // after the first write, additions wait for hours
	r, m, pass := benchPolicy(t, 0)
	pass.policy.Spec.MaxApiKeys = 40
	ctx := context.Background()
	for i := range 20 {
		k := m.addKey(t, fmt.Sprintf("a%02d", i), pass.now.Add(time.Duration(i)*time.Second), pass.now)
		r.touchApiKey("p", k)
	}
	_, err := r.ensureBundle(ctx, pass)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pass.policy.Status.ApiKeys).To(BeEquivalentTo(20))

	var added []*keygatev1.ApiKey
	for i := range 8 {
		k := m.addKey(t, fmt.Sprintf("b%02d", i), pass.now.Add(time.Hour+time.Duration(i)*time.Second), pass.now)
		r.touchApiKey("p", k)
		added = append(added, k)
	}
	writes := m.writes
	res, err := r.ensureBundle(ctx, pass)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.writes).To(Equal(writes), "every shard only gained keys: all wait")
	g.Expect(res.RequeueAfter).To(BeNumerically(">", 0))
	g.Expect(pass.policy.Status.ApiKeys).To(BeEquivalentTo(20))
	c := meta.FindStatusCondition(pass.policy.Status.Conditions, keygatev1.ConditionReady)
	g.Expect(c.Reason).To(Equal(keygatev1.ReasonBundleUpdated))

	// Disable an old key: its shard is written at once, waiting keys included.
	victim := m.keys[m.keyIndex["a00"]]
	creds := readCredentials(m.secrets[credentialsSecretName(victim)])
	shard := bundle.ShardOf(creds.KeyID, 4)
	m.updateKey(m.keyIndex["a00"], func(k *keygatev1.ApiKey) { k.Spec.Disabled = true })
	r.touchApiKey("p", victim)
	_, err = r.ensureBundle(ctx, pass)
	g.Expect(err).NotTo(HaveOccurred())
	doc, err := bundle.ParseShard(m.secrets[bundle.ShardName("p", 4, shard)].Data[bundle.SecretDataKey])
	g.Expect(err).NotTo(HaveOccurred())
	var ids []string
	for _, k := range doc.Keys {
		ids = append(ids, k.KeyID)
	}
	g.Expect(ids).NotTo(ContainElement(creds.KeyID))
	for _, k := range added {
		id := readCredentials(m.secrets[credentialsSecretName(k)]).KeyID
		if bundle.ShardOf(id, 4) == shard {
			g.Expect(ids).To(ContainElement(id), "a waiting key goes along with the removal")
		}
	}
}

// A shard Secret changed by someone else is written back by the next pass,
// incremental though it is: the watch event names it.
func TestShardChangedByOthersIsRewritten(t *testing.T) {
	g := NewWithT(t)
	withKeysPerShard(t, 10) // 4 shards for 40 keys
	r, m, pass := benchPolicy(t, 0)
	pass.policy.Spec.MaxApiKeys = 40
	ctx := context.Background()
	for i := range 20 {
		r.touchApiKey("p", m.addKey(t, fmt.Sprintf("a%02d", i), pass.now.Add(time.Duration(i)*time.Second), pass.now))
	}
	_, err := r.ensureBundle(ctx, pass)
	g.Expect(err).NotTo(HaveOccurred())
	name := bundle.ShardName("p", 4, 1)
	want := m.secrets[name].Data[bundle.SecretDataKey]

	tampered := m.secrets[name].DeepCopy()
	tampered.Data[bundle.SecretDataKey] = []byte(`{"version":"keygate.dev/bundle-shard/v2","count":4,"index":1,"hashKeyID":"00","keys":[]}`)
	m.mu.Lock()
	m.store(tampered)
	m.mu.Unlock()
	g.Expect(r.bundleSecretEvent(m.secrets[name])).To(BeTrue(), "not this process's write: a pass is queued")
	_, err = r.ensureBundle(ctx, pass)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(m.secrets[name].Data[bundle.SecretDataKey])).To(Equal(string(want)))
}

// eventBeforeAnswer delivers the watch event of each Secret update before
// the update returns, as a loaded API server's watch may.
type eventBeforeAnswer struct {
	*memCache
	mu    sync.Mutex
	event func(*corev1.Secret)
}

func (e *eventBeforeAnswer) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	if err := e.memCache.Update(ctx, obj, opts...); err != nil {
		return err
	}
	e.memCache.mu.Lock()
	stored := e.memCache.secrets[obj.GetName()].DeepCopy()
	e.memCache.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.event(stored)
	return nil
}

// The watch event of this process's own bundle write, arriving before the
// write's answer, is not taken for a change by someone else: that cost a
// pass (the shard encoded again, found unchanged) that a key change arriving
// meanwhile waited for. Someone else's update during a write is still noted.
func TestOwnBundleWriteEventBeforeItsAnswerQueuesNoPass(t *testing.T) {
	g := NewWithT(t)
	withKeysPerShard(t, 10) // 4 shards for 40 keys
	r, m, pass := benchPolicy(t, 0)
	pass.policy.Spec.MaxApiKeys = 40
	var verdicts []bool
	r.Client = &eventBeforeAnswer{memCache: m, event: func(s *corev1.Secret) { verdicts = append(verdicts, r.bundleSecretUpdated(s)) }}
	ctx := context.Background()
	for i := range 20 {
		r.touchApiKey("p", m.addKey(t, fmt.Sprintf("a%02d", i), pass.now.Add(time.Duration(i)*time.Second), pass.now))
	}
	_, err := r.ensureBundle(ctx, pass)
	g.Expect(err).NotTo(HaveOccurred())
	policy := client.ObjectKeyFromObject(pass.policy)
	for i := range 5 { // disabled: removals, written at once
		m.updateKey(i, func(k *keygatev1.ApiKey) { k.Spec.Disabled = true })
		r.touchApiKey("p", m.keys[i])
		_, err = r.ensureBundle(ctx, pass)
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(verdicts).NotTo(BeEmpty(), "shards were updated")
	g.Expect(verdicts).NotTo(ContainElement(true), "no pass queued for this process's own writes")
	r.shardStates.mu.Lock()
	g.Expect(r.shardStates.rewrite[policy]).To(BeEmpty(), "no shard marked as changed by someone else")
	r.shardStates.mu.Unlock()

	name := bundle.ShardName("p", 4, 1)
	nn := types.NamespacedName{Namespace: pass.policy.Namespace, Name: name}
	r.writing.Store(nn, m.secrets[name].Data[bundle.SecretDataKey])
	other := m.secrets[name].DeepCopy()
	other.ResourceVersion = "999999"
	other.Data[bundle.SecretDataKey] = []byte(`{"other":"bytes"}`)
	g.Expect(r.bundleSecretUpdated(other)).To(BeTrue(), "other bytes than the write under way: someone else's")
	r.writing.Delete(nn)
	r.shardStates.mu.Lock()
	g.Expect(r.shardStates.rewrite[policy]).To(HaveKey(name))
	r.shardStates.mu.Unlock()
}
