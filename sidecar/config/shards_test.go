package config

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

// shardSecrets splits the fixture's keys into count shards of policy p and
// returns the v2 index and the shard Secrets, at resourceVersion rv.
func shardSecrets(t *testing.T, f *bundletest.Fixture, count int, rv int) (*corev1.Secret, []*corev1.Secret) {
	t.Helper()
	index := f.Bundle
	index.Version, index.Keys, index.Shards = bundle.FormatVersionV2, nil, bundle.ShardNames("p", count)
	data, err := json.Marshal(&index)
	if err != nil {
		t.Fatal(err)
	}
	var shards []*corev1.Secret
	for i := range count {
		doc := bundle.Shard{Version: bundle.ShardFormatVersion, Count: count, Index: i, HashKeyID: bundle.HashKeyID(f.Bundle.HashKey), Keys: []bundle.Key{}}
		for _, k := range f.Bundle.Keys {
			if bundle.ShardOf(k.KeyID, count) == i {
				doc.Keys = append(doc.Keys, k)
			}
		}
		sd, err := json.Marshal(&doc)
		if err != nil {
			t.Fatal(err)
		}
		shards = append(shards, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: index.Shards[i], ResourceVersion: strconv.Itoa(rv)},
			Data: map[string][]byte{bundle.SecretDataKey: sd}})
	}
	return bundleSecret(strconv.Itoa(rv), data), shards
}

func keyIDs(rt *Runtime) []string {
	var out []string
	for id := range rt.Keys {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// A sidecar never runs on a mix of generations: a v2 index takes effect only
// once every shard it names is in and matches it; until then the runtime in
// force stays. Afterwards a shard is applied on its own, and the other
// shards' compiled keys are kept, not rebuilt.
func TestShardedBundleGenerations(t *testing.T) {
	f := bundletest.New("EdDSA")
	var all []string
	for i := range 12 {
		id := fmt.Sprintf("apk-%02d", i)
		f.AddKey(id, []string{"charges:List"})
		all = append(all, id)
	}
	k := &Kubernetes{Store: &Store{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	k.applySecret(bundleSecret("10", f.JSON()))
	v1 := k.Store.Load()
	if got := keyIDs(v1); !slices.Equal(got, all) {
		t.Fatalf("v1 keys: %v", got)
	}

	index, shards := shardSecrets(t, f, 4, 20)
	k.applySecret(index)
	for i, s := range shards[:3] {
		k.applyShard(s)
		if k.Store.Load() != v1 {
			t.Fatalf("a runtime was built from the index and %d of its 4 shards", i+1)
		}
	}
	// A shard of another generation (another count) does not complete it.
	_, other := shardSecrets(t, f, 2, 21)
	other[1].Name = shards[3].Name
	k.applyShard(other[1])
	if k.Store.Load() != v1 {
		t.Fatal("a shard of another generation was used")
	}
	k.applyShard(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: shards[3].Name, ResourceVersion: "22"}, Data: shards[3].Data})
	v2 := k.Store.Load()
	if v2 == v1 {
		t.Fatal("the complete v2 generation was not taken in")
	}
	if got := keyIDs(v2); !slices.Equal(got, all) {
		t.Fatalf("v2 keys: %v, want %v", got, all)
	}

	// One key disabled: only its shard changes.
	gone := all[5]
	place := bundle.ShardOf(gone, 4)
	f.Bundle.Keys = slices.DeleteFunc(f.Bundle.Keys, func(k bundle.Key) bool { return k.KeyID == gone })
	_, next := shardSecrets(t, f, 4, 30)
	k.applyShard(next[place])
	v3 := k.Store.Load()
	if v3.Keys[gone] != nil {
		t.Fatal("the disabled key is still in force")
	}
	if len(v3.Keys) != len(all)-1 {
		t.Fatalf("%d keys in force, want %d", len(v3.Keys), len(all)-1)
	}
	for id, key := range v3.Keys {
		if bundle.ShardOf(id, 4) != place && v2.Keys[id] != key {
			t.Fatalf("key %s of an unchanged shard was compiled again", id)
		}
	}
	// The older version of that shard (a late probe answer) changes nothing.
	k.applyShard(shards[place])
	if k.Store.Load().Keys[gone] != nil {
		t.Fatal("an older shard version put the disabled key back")
	}

	// Back to one v1 bundle.
	k.applySecret(bundleSecret("40", f.JSON()))
	if got := k.Store.Load(); got.Keys[gone] != nil || len(got.Keys) != len(all)-1 || k.sharded != nil {
		t.Fatalf("v1 again: %d keys, sharded state %v", len(got.Keys), k.sharded != nil)
	}
}
