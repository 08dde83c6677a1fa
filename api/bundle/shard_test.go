package bundle

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"testing"
)

// No Secret or ConfigMap name keygate writes for one policy is the name of
// one it writes for another policy, whatever the names: a shard name is not
// a bundle index (policy a-4-0's index is keygate-a-4-0; policy a's shard 0
// of 4 is keygate--a-4-0), nor a signing, revocations or usage object.
func TestShardNamesCannotCollide(t *testing.T) {
	policies := []string{"a", "a-1", "a-4", "a-4-0", "a-4-1", "a-2-1", "4-0", "a-signing", "a.b", "a.b-4-0", "keygate-a", "a-revocations", "a-usage"}
	type object struct{ kind, name string }
	owner := map[object]string{}
	shard := map[object]bool{}
	claim := func(o object, who string, isShard bool) {
		if prev, ok := owner[o]; ok && prev != who && (isShard || shard[o]) {
			t.Errorf("%s %s is written for %s and for %s", o.kind, o.name, prev, who)
		}
		owner[o], shard[o] = who, shard[o] || isShard
	}
	for _, p := range policies {
		claim(object{"Secret", SecretName(p)}, p, false)
		// controllers.signingSecretName. (The older names keep one known
		// clash: policy x-signing's bundle is named like policy x's signing
		// Secret; docs/bundle.md.)
		claim(object{"Secret", "keygate-" + p + "-signing"}, p, false)
		claim(object{"ConfigMap", RevocationsConfigMapName(p)}, p, false)
		claim(object{"ConfigMap", UsageConfigMapName(p)}, p, false)
		for _, count := range []int{1, 2, 4, 64} {
			for _, n := range ShardNames(p, count) {
				claim(object{"Secret", n}, p, true)
			}
		}
	}
}

func TestShardCountAndPlace(t *testing.T) {
	for _, c := range []struct{ max, want int }{{1, 0}, {2000, 0}, {2001, 2}, {4000, 2}, {4001, 4}, {10000, 8}, {100000, 64}} {
		if got := ShardCount(c.max); got != c.want {
			t.Errorf("ShardCount(%d) = %d, want %d", c.max, got, c.want)
		}
	}
	counts := make([]int, 64)
	for i := range 100000 {
		id := fmt.Sprintf("apk-%020d", i)
		s := ShardOf(id, 64)
		if s != ShardOf(id, 64) {
			t.Fatal("ShardOf is not stable")
		}
		counts[s]++
	}
	for s, n := range counts {
		// 1,562 a shard on average; a 1 MiB Secret holds some 5,600 keys.
		if n < 1300 || n > 1850 {
			t.Errorf("shard %d holds %d of 100,000 keys", s, n)
		}
	}
}

// ShardOf is the format's FNV-1a-32 (hash/fnv) modulo the count, computed
// without allocating: the sidecar finds a key's shard with it per request.
func TestShardOfIsFNV1a(t *testing.T) {
	for i := range 2000 {
		id := fmt.Sprintf("apk-%x", i*7919)
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		for _, count := range []int{2, 8, 64, 100} {
			if got, want := ShardOf(id, count), int(h.Sum32()%uint32(count)); got != want {
				t.Fatalf("ShardOf(%q, %d) = %d, FNV-1a says %d", id, count, got, want)
			}
		}
	}
	id := "apk-1wtRxni5IsPsSpBLWpwr"
	if n := testing.AllocsPerRun(100, func() { _ = ShardOf(id, 64) }); n != 0 {
		t.Fatalf("ShardOf allocates %v times", n)
	}
}

func TestParseShardAndAssemble(t *testing.T) {
	hk := make([]byte, 32)
	index := &Bundle{Version: FormatVersionV2, HashKey: hk, Shards: ShardNames("p", 2)}
	var shards []*Shard
	for i := range 2 {
		shards = append(shards, &Shard{Version: ShardFormatVersion, Count: 2, Index: i, HashKeyID: HashKeyID(hk), Keys: []Key{}})
	}
	for i := range 6 {
		id := fmt.Sprintf("apk-%d", i)
		s := shards[ShardOf(id, 2)]
		s.Keys = append(s.Keys, Key{Name: id, KeyID: id, Secrets: []SecretDigest{{Digest: Digest(hk, id), Version: 1}}})
	}
	for i, s := range shards {
		data, _ := json.Marshal(s)
		parsed, err := ParseShard(data)
		if err != nil {
			t.Fatal(err)
		}
		if !parsed.Matches(index, i) {
			t.Fatalf("shard %d does not match its index", i)
		}
	}
	all, err := Assemble(index, shards)
	if err != nil {
		t.Fatal(err)
	}
	if all.Version != FormatVersion || len(all.Keys) != 6 || !all.Carries("apk-3", Digest(hk, "apk-3")) {
		t.Fatalf("assembled: %s, %d keys", all.Version, len(all.Keys))
	}

	// A key in the wrong shard, or a shard of another generation, is refused.
	wrong := *shards[0]
	wrong.Keys = append([]Key{}, shards[1].Keys...)
	data, _ := json.Marshal(&wrong)
	if _, err := ParseShard(data); err == nil || !strings.Contains(err.Error(), "belongs to shard 1") {
		t.Fatalf("a key in the wrong shard: %v", err)
	}
	other := *shards[1]
	other.HashKeyID = HashKeyID([]byte("another hash key, another generation"))
	if _, err := Assemble(index, []*Shard{shards[0], &other}); err == nil {
		t.Fatal("a shard of another hash key was assembled")
	}
	if err := (&Bundle{Version: FormatVersionV2}).Validate(); err == nil || !strings.Contains(err.Error(), "names shards") {
		t.Fatalf("a v2 index without shards: %v", err)
	}
}
