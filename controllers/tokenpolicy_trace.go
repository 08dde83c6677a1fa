package controllers

import (
	"time"

	"github.com/go-logr/logr"
)

// passTrace is what one TokenPolicy pass did, logged at V(1) ("Bundle
// pass"): where a change's way to the sidecars went (docs/operator.md, "At
// scale").
type passTrace struct {
	start time.Time
	// kind is "incremental", "full" or "" (an unsharded bundle, or a pass
	// that ended before the bundle); why says why a sharded pass was full.
	kind, why string
	// changed is how many ApiKeys the watches named since the last pass;
	// waited is how long the oldest of those changes waited for this pass.
	changed int
	waited  time.Duration
	// read is the time until the pass knew its keys (the signing and
	// revocations phases included); a full pass reads every key.
	read time.Duration
	// encoded, written and paced count shards: encoded, written (changed)
	// and left waiting for the additions' pace; bytes were written.
	encoded, written, paced int
	bytes                   int64
	// pending is why the pass ended early, to be retried (nil: it did not).
	pending error
}

// log writes the pass's line; took is its whole time, the status write
// included.
func (t *passTrace) log(log logr.Logger, err error) {
	if !log.V(1).Enabled() {
		return
	}
	kv := []any{"took", time.Since(t.start), "kind", t.kind, "changed", t.changed, "waited", t.waited,
		"read", t.read, "encoded", t.encoded, "written", t.written, "paced", t.paced, "bytes", t.bytes}
	if t.why != "" {
		kv = append(kv, "why", t.why)
	}
	if err != nil {
		kv = append(kv, "failed", err.Error())
	}
	if t.pending != nil {
		kv = append(kv, "failed", "retried: "+t.pending.Error())
	}
	log.V(1).Info("Bundle pass", kv...)
}
