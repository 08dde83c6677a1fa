package controllers

import (
	"strings"
	"time"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Annotations of the bundle Secret that say which eligible ApiKeys (neither
// disabled nor expired) the bundle leaves out and why, as a place in the
// admission order ("<creationTimestamp RFC 3339> <name>" of the last key kept,
// or "-" when none is): every eligible key after it is out. They are written
// with the bundle, in the same update, so an ApiKey reconciler reading the
// Secret sees a bundle and its cut that belong together.
const (
	// annotationLimitCutoff: keys after it are over spec.maxApiKeys (LimitExceeded).
	annotationLimitCutoff = "keygate.dev/limit-cutoff"
	// annotationSizeCutoff: keys after it did not fit in the Secret (BundleTooLarge).
	annotationSizeCutoff = "keygate.dev/size-cutoff"
)

// cutoff is a place in the admission order; the keys after it are left out.
// An empty name stands before every key.
type cutoff struct {
	created time.Time
	name    string
}

// cutAfter is the cutoff that keeps key and every key before it; nil for nil.
func cutAfter(key *keygatev1.ApiKey) *cutoff {
	if key == nil {
		return nil
	}
	return &cutoff{created: key.CreationTimestamp.UTC(), name: key.Name}
}

// excludes reports whether key comes after c (and so is left out).
func (c *cutoff) excludes(key *keygatev1.ApiKey) bool {
	if c == nil {
		return false
	}
	return c.name == "" || orderBefore(c.created, c.name, key.CreationTimestamp.Time, key.Name)
}

func (c *cutoff) String() string {
	if c.name == "" {
		return "-"
	}
	return c.created.UTC().Format(time.RFC3339) + " " + c.name
}

// parseCutoff reads an annotation value; ok is false for a malformed one.
func parseCutoff(v string) (c *cutoff, ok bool) {
	if v == "-" {
		return &cutoff{}, true
	}
	ts, name, found := strings.Cut(v, " ")
	t, err := time.Parse(time.RFC3339, ts)
	if !found || err != nil || name == "" {
		return nil, false
	}
	return &cutoff{created: t, name: name}, true
}

// cutoffs are the limit and size cuts of one bundle.
type cutoffs struct{ limit, size *cutoff }

func (c cutoffs) annotations() map[string]string {
	out := map[string]string{}
	if c.limit != nil {
		out[annotationLimitCutoff] = c.limit.String()
	}
	if c.size != nil {
		out[annotationSizeCutoff] = c.size.String()
	}
	return out
}

// readCutoffs reads the cuts of a bundle Secret. A malformed value counts as
// a cut before every key. The cuts only name the reason of a key the bundle
// does not carry; whether a key is Ready depends on the bundle alone.
func readCutoffs(annotations map[string]string) cutoffs {
	read := func(k string) *cutoff {
		v, ok := annotations[k]
		if !ok {
			return nil
		}
		if c, ok := parseCutoff(v); ok {
			return c
		}
		return &cutoff{}
	}
	return cutoffs{limit: read(annotationLimitCutoff), size: read(annotationSizeCutoff)}
}

func (c cutoffs) equal(o cutoffs) bool {
	same := func(a, b *cutoff) bool {
		return (a == nil) == (b == nil) && (a == nil || (a.name == b.name && a.created.Equal(b.created)))
	}
	return same(c.limit, o.limit) && same(c.size, o.size)
}

// withCutoffs returns existing with the cut annotations replaced by cuts.
func withCutoffs(existing, cuts map[string]string) map[string]string {
	out := make(map[string]string, len(existing)+len(cuts))
	for k, v := range existing {
		if k != annotationLimitCutoff && k != annotationSizeCutoff {
			out[k] = v
		}
	}
	for k, v := range cuts {
		out[k] = v
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
