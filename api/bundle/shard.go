package bundle

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// Sharded bundles (format v2). A policy whose spec.maxApiKeys is above
// KeysPerShard publishes its bundle across several Secrets: the index
// keygate-<policy> (a Bundle of FormatVersionV2: policy, hash key, signing
// keys and the names of the shards, no keys) and the shards (a Shard each,
// the keys whose key ID hashes to it). docs/bundle.md describes the format
// and the rule a reader follows so that it never runs on a mix of two
// generations.

// FormatVersionV2 is the Version of a sharded bundle's index.
const FormatVersionV2 = "keygate.dev/bundle/v2"

// ShardFormatVersion is the Version of a shard document.
const ShardFormatVersion = "keygate.dev/bundle-shard/v2"

// LabelShard is the label of a shard Secret: its place in the index's list.
const LabelShard = "keygate.dev/bundle-shard"

// KeysPerShard is the number of keys one shard is sized for: a policy is
// sharded when its spec.maxApiKeys is above it, into the smallest power of
// two of shards that holds maxApiKeys at this many keys each. At about 180
// bytes a key, a full shard is some 360 KiB, a third of what a Secret holds
// (keys with many clients or CIDRs are larger). A variable so that tests can
// lower it.
var KeysPerShard = 2000

// ShardCount is the number of shards of a policy accepting maxApiKeys keys;
// 0 means one unsharded (v1) bundle. It depends on the spec only, so a key's
// shard stays put as keys come and go.
func ShardCount(maxApiKeys int) int {
	if maxApiKeys <= KeysPerShard {
		return 0
	}
	n := 1
	for n*KeysPerShard < maxApiKeys {
		n *= 2
	}
	return n
}

// ShardName is the name of shard i of count of a policy:
// keygate--<policy>-<count>-<i>. The double dash cannot begin the name of any
// other Secret keygate writes: those are keygate-<name>..., and a Kubernetes
// name starts with a letter or a digit, so no policy's bundle, signing,
// revocations or usage object, nor another policy's shard, can be named like
// it. The count is in the name so that a new shard count writes new Secrets
// beside the old ones instead of over them.
func ShardName(policy string, count, i int) string {
	return fmt.Sprintf("keygate--%s-%d-%d", policy, count, i)
}

// ShardNames are the names of the count shards of a policy.
func ShardNames(policy string, count int) []string {
	out := make([]string, count)
	for i := range out {
		out[i] = ShardName(policy, count, i)
	}
	return out
}

// ShardOf is the shard (0..count-1) of a key ID: FNV-1a of the ID modulo
// count, so it moves only when count does.
func ShardOf(keyID string, count int) int {
	if count <= 1 {
		return 0
	}
	// FNV-1a, 32 bits (hash/fnv's New32a), inline: a sidecar computes it
	// for every request of a sharded policy, without allocating.
	const offset32, prime32 = 2166136261, 16777619
	h := uint32(offset32)
	for i := 0; i < len(keyID); i++ {
		h ^= uint32(keyID[i])
		h *= prime32
	}
	return int(h % uint32(count)) //nolint:gosec // count is a small positive number
}

// HashKeyID names a hash key without revealing it: the first 8 bytes of its
// SHA-256, hex. A shard records the hash key its digests were made with.
func HashKeyID(hashKey []byte) string {
	sum := sha256.Sum256(hashKey)
	return hex.EncodeToString(sum[:8])
}

// Shard is one shard document.
type Shard struct {
	// Version is ShardFormatVersion.
	Version string `json:"version"`
	// Count and Index place the shard: it holds the keys with
	// ShardOf(keyID, Count) == Index.
	Count int `json:"count"`
	Index int `json:"index"`
	// HashKeyID is HashKeyID of the hash key of the digests.
	HashKeyID string `json:"hashKeyID"`
	// Keys are the shard's keys, sorted by KeyID.
	Keys []Key `json:"keys"`
}

// ParseShard decodes and validates a shard document.
func ParseShard(data []byte) (*Shard, error) {
	s := &Shard{}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("decode bundle shard: %w", err)
	}
	var errs []error
	if s.Version != ShardFormatVersion {
		errs = append(errs, fmt.Errorf("version %q is not %q", s.Version, ShardFormatVersion))
	}
	if s.Count < 1 || s.Index < 0 || s.Index >= s.Count {
		errs = append(errs, fmt.Errorf("shard %d of %d is out of range", s.Index, s.Count))
	}
	for i := range s.Keys {
		if got := ShardOf(s.Keys[i].KeyID, s.Count); got != s.Index {
			errs = append(errs, fmt.Errorf("keys[%d] (%s) belongs to shard %d, not %d", i, s.Keys[i].KeyID, got, s.Index))
		}
	}
	errs = append(errs, validateKeys(s.Keys))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// Matches reports whether s is a shard of index at the given place: the same
// count and the same hash key. A reader uses only shards that match.
func (s *Shard) Matches(index *Bundle, i int) bool {
	return s.Count == len(index.Shards) && s.Index == i && s.HashKeyID == HashKeyID(index.HashKey)
}

// Assemble returns the unsharded form of a v2 index and its shards (in the
// index's order; each must match): the bundle a v1 reader would have read.
func Assemble(index *Bundle, shards []*Shard) (*Bundle, error) {
	if index.Version != FormatVersionV2 {
		return nil, fmt.Errorf("bundle version %q is not sharded", index.Version)
	}
	if len(shards) != len(index.Shards) {
		return nil, fmt.Errorf("%d shards for an index of %d", len(shards), len(index.Shards))
	}
	out := *index
	out.Version, out.Shards = FormatVersion, nil
	out.Keys = nil
	for i, s := range shards {
		if !s.Matches(index, i) {
			return nil, fmt.Errorf("shard %s is not shard %d of this index (another generation)", index.Shards[i], i)
		}
		out.Keys = append(out.Keys, s.Keys...)
	}
	sort.Slice(out.Keys, func(i, j int) bool { return out.Keys[i].KeyID < out.Keys[j].KeyID })
	return &out, nil
}
