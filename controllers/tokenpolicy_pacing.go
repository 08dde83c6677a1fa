package controllers

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// shardAdditionsBytesPerSecond paces the shard writes of a sharded policy
// whose only change is keys added: after a pass that wrote n bytes of
// shards, a shard that only gains keys waits n / this rate before it is
// written again. While keys arrive in bulk, nearly every pass rewrites every
// shard; etcd keeps each version until the API server compacts (every 5
// minutes by default), so unpaced, 100,000 keys arriving would write some
// 18 MiB a pass, pass after pass. At 1 MiB/s at most some 300 MiB of
// additions land between two compactions, well under etcd's default 2 GiB
// quota. Removals and changes (a key disabled, deleted, expired, rotated, a
// grace period ended, the policy or its signing keys changed) are never
// paced. A variable so that a test can lower it.
var shardAdditionsBytesPerSecond = func() *atomic.Int64 {
	var v atomic.Int64
	v.Store(1 << 20)
	return &v
}()

// additionPacer spaces the additions-only shard writes of each sharded
// policy (shardAdditionsBytesPerSecond). It also remembers the entries each
// shard Secret carries at the version this process wrote, to tell a shard
// that only gains keys from one that loses or changes one.
type additionPacer struct {
	mu sync.Mutex
	// next is, per policy, the earliest time of its next additions-only write.
	next map[types.NamespacedName]time.Time
	// shards is, per shard Secret, the entries of the version written.
	shards map[types.NamespacedName]shardWritten
}

type shardWritten struct {
	resourceVersion string
	keys            []*keyState
}

// wait is how long the policy's additions-only shard writes still wait; 0
// when they are due.
func (a *additionPacer) wait(policy types.NamespacedName) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return time.Until(a.next[policy])
}

// wrote records that a pass of the policy wrote n bytes of shards.
func (a *additionPacer) wrote(policy types.NamespacedName, n int64) {
	if n <= 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.next == nil {
		a.next = map[types.NamespacedName]time.Time{}
	}
	a.next[policy] = time.Now().Add(time.Duration(n) * time.Second / time.Duration(shardAdditionsBytesPerSecond.Load()))
}

// record remembers the keys that the shard Secret nn carries at
// resourceVersion rv (keyStates are never modified, so they are kept as
// they are).
func (a *additionPacer) record(nn types.NamespacedName, rv string, keys []*keyState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.shards == nil {
		a.shards = map[types.NamespacedName]shardWritten{}
	}
	a.shards[nn] = shardWritten{resourceVersion: rv, keys: keys}
}

// forgetPolicy drops the pace of a deleted policy.
func (a *additionPacer) forgetPolicy(policy types.NamespacedName) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.next, policy)
}

// forget drops what is remembered of a deleted shard Secret.
func (a *additionPacer) forget(nn types.NamespacedName) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.shards, nn)
}

// onlyAdds reports whether members (by ApiKey name) differ from what the
// shard Secret name carries only by keys added: every key it carries is a
// member, with the same entry, and there are more members. It returns how
// many keys it carries. It is false when in doubt: a shard this process has
// not written, or one written since by someone else.
func (a *additionPacer) onlyAdds(ctx context.Context, c client.Reader, p *keygatev1.TokenPolicy, name string, members map[string]*keyState) (int, bool) {
	nn := types.NamespacedName{Namespace: p.Namespace, Name: name}
	a.mu.Lock()
	held, ok := a.shards[nn]
	a.mu.Unlock()
	if !ok || len(members) <= len(held.keys) {
		return 0, false
	}
	cached := &corev1.Secret{}
	if err := c.Get(ctx, nn, cached, client.UnsafeDisableDeepCopy); err != nil || !metav1.IsControlledBy(cached, p) {
		return 0, false
	}
	// The cache may lag behind this process's own write, never lead it
	// unless someone else wrote the Secret since.
	if cmp, err := resourceversion.CompareResourceVersion(cached.ResourceVersion, held.resourceVersion); err != nil || cmp > 0 {
		return 0, false
	}
	for _, old := range held.keys {
		cur := members[old.name]
		if cur == nil || (cur != old && !cur.same(old)) {
			return 0, false
		}
	}
	return len(held.keys), true
}
