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
	for _, t := range rt.keys {
		for i := range t {
			out = append(out, t[i].KeyID)
		}
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
	if v3.Key(gone) != nil {
		t.Fatal("the disabled key is still in force")
	}
	if v3.KeyCount() != len(all)-1 {
		t.Fatalf("%d keys in force, want %d", v3.KeyCount(), len(all)-1)
	}
	for _, id := range keyIDs(v3) {
		if bundle.ShardOf(id, 4) != place && v2.Key(id) != v3.Key(id) {
			t.Fatalf("key %s of an unchanged shard was compiled again", id)
		}
	}
	// Keys of the same permissions share them; a lookup neither locks nor
	// allocates.
	if a, b := v3.Key(all[0]), v3.Key(all[1]); bundle.ShardOf(all[0], 4) == bundle.ShardOf(all[1], 4) && a.PermSet != b.PermSet {
		t.Fatal("two keys of one shard with the same permissions do not share them")
	}
	if n := testing.AllocsPerRun(100, func() { _ = v3.Key(all[3]) }); n != 0 {
		t.Fatalf("a key lookup allocates %v times", n)
	}
	// A new index of the same generation (here the policy's default rate
	// limit) applies to every key without its own, and the shards are not
	// compiled again.
	if v3.KeyLimit(v3.Key(all[0])).Valid() {
		t.Fatal("a limit before the policy has one")
	}
	index.ResourceVersion = "31"
	b, err := bundle.Parse(index.Data[bundle.SecretDataKey])
	if err != nil {
		t.Fatal(err)
	}
	b.Policy.RateLimit = &bundle.RateLimit{Requests: 5, PerMillis: 1000, Burst: 5}
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	index.Data = map[string][]byte{bundle.SecretDataKey: data}
	k.applySecret(index)
	v4 := k.Store.Load()
	if l := v4.KeyLimit(v4.Key(all[0])); l.Requests != 5 || v4.Key(all[0]) != v3.Key(all[0]) {
		t.Fatalf("after the policy's change: limit %+v, key compiled again: %v", l, v4.Key(all[0]) != v3.Key(all[0]))
	}

	// The older version of that shard (a late probe answer) changes nothing.
	k.applyShard(shards[place])
	if k.Store.Load().Key(gone) != nil {
		t.Fatal("an older shard version put the disabled key back")
	}

	// Back to one v1 bundle.
	k.applySecret(bundleSecret("40", f.JSON()))
	if got := k.Store.Load(); got.Key(gone) != nil || got.KeyCount() != len(all)-1 || k.sharded != nil {
		t.Fatalf("v1 again: %d keys, sharded state %v", got.KeyCount(), k.sharded != nil)
	}
}

// A key table finds every key whatever the order of the document's entries,
// and nothing for an ID between, before or after them.
func TestKeyTableFind(t *testing.T) {
	var keys []bundle.Key
	for _, id := range []string{"apk-m", "apk-c", "apk-x", "apk-a", "apk-q"} {
		keys = append(keys, bundle.Key{KeyID: id, Secrets: []bundle.SecretDigest{{Digest: make([]byte, 32), Version: 1}}})
	}
	table, err := compileKeys(keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if got := table.find(k.KeyID); got == nil || got.KeyID != k.KeyID {
			t.Fatalf("find(%s) = %v", k.KeyID, got)
		}
	}
	for _, id := range []string{"apk-0", "apk-b", "apk-n", "apk-z", "", "apk-"} {
		if got := table.find(id); got != nil {
			t.Fatalf("find(%q) = %s", id, got.KeyID)
		}
	}
	if (keyTable{}).find("apk-a") != nil {
		t.Fatal("an empty table found a key")
	}
}
