package controllers

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

func fitBundle() *bundle.Bundle {
	return &bundle.Bundle{
		Version: bundle.FormatVersion,
		Policy: bundle.Policy{Issuer: "https://x", Audience: "x", TokenTTLSeconds: 60, ClientTokenTTLSeconds: 60,
			BearerSchemes: []string{"Bearer"}, DefaultAction: "Deny"},
		HashKey:     make([]byte, 32),
		SigningKeys: []bundle.SigningKey{{KeyID: "k", Algorithm: "HS256", JWK: []byte(`{}`)}},
	}
}

func TestPackBundleKeepsTheLongestPrefixThatFits(t *testing.T) {
	g := NewWithT(t)
	var entries []bundle.Key
	for i := range 10 {
		// Admission order is the reverse of key ID order, so the prefix is visible.
		entries = append(entries, bundle.Key{Name: fmt.Sprintf("k%d", i), KeyID: fmt.Sprintf("apk-%02d", 9-i),
			Secrets: []bundle.SecretDigest{{Digest: bundle.Digest(make([]byte, 32), fmt.Sprint(i)), Version: 1}}})
	}
	n, all, err := packBundle(fitBundle(), entries, 1<<20)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(n).To(Equal(10))
	for limit := len(all) - 1; limit > len(all)/3; limit -= 37 {
		n, data, err := packBundle(fitBundle(), entries, limit)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(len(data)).To(BeNumerically("<=", limit))
		g.Expect(n).To(BeNumerically("<", 10))
		b, err := bundle.Parse(data)
		g.Expect(err).NotTo(HaveOccurred())
		var names []string
		for _, k := range b.Keys {
			names = append(names, k.Name)
		}
		var want []string
		for i := n - 1; i >= 0; i-- { // sorted by key ID
			want = append(want, fmt.Sprintf("k%d", i))
		}
		g.Expect(names).To(Equal(want), "limit %d", limit)
		_, more, err := packBundle(fitBundle(), entries[:n+1], 1<<20)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(len(more)).To(BeNumerically(">", limit), "one more key would not have fit")
	}
	n, data, err := packBundle(fitBundle(), entries, 10)
	g.Expect(n).To(BeZero())
	g.Expect(err).To(MatchError(errBundleTooLarge), "not even the policy fits: %d bytes", len(data))
}

func TestCutoffs(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	key := func(name string, at time.Time) *keygatev1.ApiKey {
		return &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.Time{Time: at}}}
	}
	cuts := cutoffs{limit: cutAfter(key("b", t0)), size: &cutoff{}}
	read := readCutoffs(withCutoffs(map[string]string{"other": "kept"}, cuts.annotations()))
	g.Expect(read.equal(cuts)).To(BeTrue())
	g.Expect(read.limit.excludes(key("a", t0))).To(BeFalse(), "same second, earlier name")
	g.Expect(read.limit.excludes(key("b", t0))).To(BeFalse(), "the cut key itself is kept")
	g.Expect(read.limit.excludes(key("c", t0))).To(BeTrue())
	g.Expect(read.limit.excludes(key("a", t0.Add(time.Second)))).To(BeTrue())
	g.Expect(read.size.excludes(key("a", t0.Add(-time.Hour)))).To(BeTrue(), "- leaves every key out")
	g.Expect(readCutoffs(nil).limit.excludes(key("z", t0))).To(BeFalse())
	g.Expect(readCutoffs(map[string]string{annotationSizeCutoff: "garbage"}).size.excludes(key("a", t0))).To(BeTrue())
	g.Expect(withCutoffs(map[string]string{annotationLimitCutoff: "x", "other": "kept"}, nil)).To(Equal(map[string]string{"other": "kept"}))
	g.Expect(withCutoffs(nil, nil)).To(BeNil())
}

func TestChangedKeys(t *testing.T) {
	g := NewWithT(t)
	d := func(s string) []bundle.SecretDigest {
		return []bundle.SecretDigest{{Digest: bundle.Digest(make([]byte, 32), s), Version: 1}}
	}
	view := func(cuts cutoffs, keys ...bundle.Key) *bundleView {
		return &bundleView{entries: newViewEntries(keys), cuts: cuts}
	}
	old := view(cutoffs{}, bundle.Key{Name: "same", KeyID: "apk-1", Secrets: d("a")},
		bundle.Key{Name: "rotated", KeyID: "apk-2", Secrets: d("b")},
		bundle.Key{Name: "removed", KeyID: "apk-3", Secrets: d("c")},
		bundle.Key{Name: "perms", KeyID: "apk-5", Secrets: d("e")})
	cur := view(cutoffs{}, bundle.Key{Name: "same", KeyID: "apk-1", Secrets: d("a")},
		bundle.Key{Name: "rotated", KeyID: "apk-2", Secrets: d("b2")},
		bundle.Key{Name: "added", KeyID: "apk-4", Secrets: d("d")},
		bundle.Key{Name: "perms", KeyID: "apk-5", Secrets: d("e"), Permissions: []string{"x:Read"}})
	names, all := changedKeys(old, cur)
	g.Expect(all).To(BeFalse())
	g.Expect(names).To(ConsistOf("rotated", "removed", "added"), "a permission change does not move Ready")

	_, all = changedKeys(old, view(cutoffs{size: &cutoff{}}))
	g.Expect(all).To(BeTrue(), "moved cuts may change the reason of keys in neither version")
	_, all = changedKeys(nil, cur)
	g.Expect(all).To(BeTrue())
}
