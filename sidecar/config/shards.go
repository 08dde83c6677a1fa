package config

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	"github.com/keygate-dev/keygate/api/bundle"
)

// A sharded (v2) bundle: the index Secret names the shard Secrets, and the
// sidecar watches each of them by name (its Role lists exactly those names).
// The rule that keeps a sidecar off a mix of generations: a runtime is built
// only from the index in force and, for every shard it names, a shard
// document that matches it (the same shard count and place, the same hash
// key; bundle.Shard.Matches). Until every named shard matches, the runtime
// in force stays. Within one generation a key's shard never changes (it
// depends on its key ID and the count only), so a shard is applied on its
// own: one key's change recompiles only its shard.

// shardedState is what the sidecar holds of a v2 bundle.
type shardedState struct {
	index     *bundle.Bundle
	indexName string
	indexSum  [sha256.Size]byte
	hashKeyID string // bundle.HashKeyID of the index's hash key
	// base is the index compiled (policy, signing keys; no keys), once per
	// index: a shard's change reuses it.
	base *Runtime
	// shards by Secret name: the last version applied of each named shard.
	shards map[string]*shardState
	// watches stops the watch of each named shard.
	watches map[string]context.CancelFunc
}

// shardState is one shard as applied: its place and generation and its
// compiled keys. The document and the Secret are not kept: at 100,000 keys
// the parsed shards alone were 39 MiB of the sidecar's heap.
type shardState struct {
	resourceVersion string
	sum             [sha256.Size]byte
	count, index    int
	hashKeyID       string
	keys            keyTable
}

// matches is bundle.Shard.Matches for the shard as held.
func (sh *shardState) matches(st *shardedState, i int) bool {
	return sh.count == len(st.index.Shards) && sh.index == i && sh.hashKeyID == st.hashKeyID
}

// applyIndex takes a v2 index in force: it watches the shards it names (and
// stops watching the others), then builds the runtime if every shard is in.
// The caller holds applyMu.
func (k *Kubernetes) applyIndex(name string, index *bundle.Bundle, data []byte) {
	st := k.sharded
	if st == nil {
		st = &shardedState{shards: map[string]*shardState{}, watches: map[string]context.CancelFunc{}}
		k.sharded = st
	}
	sum := sha256.Sum256(data)
	if st.index != nil && sum == st.indexSum {
		return // the same document (only the Secret's metadata changed)
	}
	st.index, st.indexName, st.indexSum, st.base = index, name, sum, nil
	st.hashKeyID = bundle.HashKeyID(index.HashKey)
	for shard, stop := range st.watches {
		if !slices.Contains(index.Shards, shard) {
			stop()
			delete(st.watches, shard)
			delete(st.shards, shard)
			k.forgetHealth("Secret " + shard)
		}
	}
	for _, shard := range index.Shards {
		if _, ok := st.watches[shard]; !ok && k.runCtx != nil {
			st.watches[shard] = k.watchShard(shard)
		}
	}
	k.assemble()
}

// stopShards stops every shard watch (the bundle is v1 again).
func (k *Kubernetes) stopShards() {
	if k.sharded == nil {
		return
	}
	for shard, stop := range k.sharded.watches {
		stop()
		k.forgetHealth("Secret " + shard)
	}
	k.sharded = nil
}

// shardReadsAtOnce is how many shard Secrets are listed, or read from their
// watches, and applied at once (each is compiled under applyMu, one at a
// time, so more only lets reads overlap a compilation): when a sidecar
// starts, or when the operator rewrites many shards at once (a bulk
// creation at 100,000 keys), the 64 shard watches would otherwise each hold
// a response and a decoded Secret of some 280 KiB at the same moment.
const shardReadsAtOnce = 4

// watchShard starts the watch of one shard Secret and returns its stop. It
// is a list-and-watch without a store: each version received is applied as
// it is read, holding one of shardReads, and dropped (an informer would
// keep the last one of each shard, 18 MiB at 100,000 keys, beside the
// compiled keys; a reflector's queue would hold the versions received while
// the shards before them are applied).
func (k *Kubernetes) watchShard(name string) context.CancelFunc {
	ctx, cancel := context.WithCancel(k.runCtx)
	what := "Secret " + name
	health := func(err error) {
		if ctx.Err() == nil {
			k.report(what, err)
		}
	}
	lw := namedListWatch(k.Client, "secrets", k.Namespace, name, health, &applier{slots: k.shardReads, apply: func(obj runtime.Object) {
		if s, ok := obj.(*corev1.Secret); ok && s.Name == name {
			k.applyShard(s)
			s.Data = nil // the reflector keeps only the version
		}
	}})
	list := lw.ListWithContextFunc
	lw.ListWithContextFunc = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		select {
		case k.shardReads <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-k.shardReads }()
		out, err := list(ctx, o)
		// Applied here, while the slot is held, and handed on empty: the
		// watch that follows starts from the list's resourceVersion, and
		// its events are applied as they are read (applier).
		if l, ok := out.(*corev1.SecretList); ok && err == nil {
			for i := range l.Items {
				if l.Items[i].Name == name {
					k.applyShard(&l.Items[i])
				}
			}
			l.Items = nil
		}
		return out, err
	}
	ctrl := cache.New(&cache.Config{
		Queue:         cache.NewDeltaFIFOWithOptions(cache.DeltaFIFOOptions{KeyFunction: cache.MetaNamespaceKeyFunc}),
		ListerWatcher: listThenWatch{lw},
		ObjectType:    &corev1.Secret{},
		// Nothing left to do: the list and the watch applied each version.
		Process:                      func(any, bool) error { return nil },
		WatchErrorHandlerWithContext: func(_ context.Context, _ *cache.Reflector, err error) { health(err) },
	})
	go ctrl.RunWithContext(ctx)
	return cancel
}

// applyShard takes in a version of a shard Secret newer than the one held,
// then builds the runtime if every shard is in.
func (k *Kubernetes) applyShard(s *corev1.Secret) {
	k.applyMu.Lock()
	defer k.applyMu.Unlock()
	st := k.sharded
	if st == nil || !slices.Contains(st.index.Shards, s.Name) {
		return // no longer named by the index
	}
	held := st.shards[s.Name]
	if held != nil && !newerVersion(s.ResourceVersion, held.resourceVersion) {
		return
	}
	data := s.Data[bundle.SecretDataKey]
	doc, err := bundle.ParseShard(data)
	if err != nil {
		k.Store.Reject(fmt.Errorf("shard %s: %w", s.Name, err))
		k.Log.Error("Rejected bundle shard; the last good bundle stays in force", "secret", s.Name, "error", err)
		return
	}
	keys, err := compileKeys(doc.Keys)
	if err != nil {
		k.Store.Reject(fmt.Errorf("shard %s: %w", s.Name, err))
		k.Log.Error("Rejected bundle shard; the last good bundle stays in force", "secret", s.Name, "error", err)
		return
	}
	st.shards[s.Name] = &shardState{resourceVersion: s.ResourceVersion, sum: sha256.Sum256(data),
		count: doc.Count, index: doc.Index, hashKeyID: doc.HashKeyID, keys: keys}
	k.assemble()
}

// assemble builds and installs the runtime of the index and its shards when
// every shard it names matches it; otherwise the runtime in force stays.
// Each shard was compiled when it arrived and the index once, so this only
// puts their pointers together (a shard's change costs its own compilation,
// not the other shards'). The caller holds applyMu.
func (k *Kubernetes) assemble() {
	st := k.sharded
	fp := sha256.New()
	fp.Write(st.indexSum[:])
	tables := make([]keyTable, len(st.index.Shards))
	for i, name := range st.index.Shards {
		sh := st.shards[name]
		if sh == nil || !sh.matches(st, i) {
			k.Log.Debug("Waiting for a bundle shard of the current generation", "secret", name)
			return
		}
		fp.Write(sh.sum[:])
		tables[i] = sh.keys
	}
	if st.base == nil {
		base, err := CompileBundle(st.index) // the policy and signing keys; the index has no keys
		if err != nil {
			k.Store.Reject(err)
			k.Log.Error("Rejected bundle; the last good one stays in force", "secret", st.indexName, "error", err)
			return
		}
		st.base = base
	}
	rt := st.base.withKeys(tables)
	rt.Fingerprint = fmt.Sprintf("%x", fp.Sum(nil)[:6])
	rt.LoadedAt = time.Now()
	k.install(st.indexName, rt)
}

// listThenWatch makes a reflector list and then watch (client-go otherwise
// streams the initial state through the watch, WatchListClient), so that a
// starting sidecar's shards are read and applied a few at a time, in the
// list (watchShard).
type listThenWatch struct{ *cache.ListWatch }

func (listThenWatch) IsWatchListSemanticsUnSupported() bool { return true }

// probeShards reads with GET the shards the index names that are due (see
// probe) and reports whether every read succeeded. It stops at the first
// read the API server did not answer (unreachable: the next ones would wait
// out their timeouts too); a shard it refused (say, not yet in the Role)
// does not keep the others from being read.
func (k *Kubernetes) probeShards(ctx context.Context, due map[string]bool) bool {
	k.applyMu.Lock()
	var names []string
	if k.sharded != nil {
		for _, name := range k.sharded.index.Shards {
			if due["Secret "+name] {
				names = append(names, name)
			}
		}
	}
	k.applyMu.Unlock()
	ok := true
	for _, name := range names {
		gctx, cancel := context.WithTimeout(ctx, probeInterval)
		s := &corev1.Secret{}
		err := k.Client.Get().Namespace(k.Namespace).Resource("secrets").Name(name).Do(gctx).Into(s)
		cancel()
		if err != nil {
			var status apierrors.APIStatus
			if !errors.As(err, &status) {
				return false
			}
			ok = false
			continue
		}
		k.applyShard(s)
	}
	return ok
}

// forgetHealth drops the health record and the catch-up of an object no
// longer watched.
func (k *Kubernetes) forgetHealth(what string) {
	k.mu.Lock()
	delete(k.health, what)
	delete(k.broken, what)
	k.mu.Unlock()
}
