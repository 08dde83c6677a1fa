// Package usage records, per key ID, the minute in which a request last
// authenticated, and publishes what changed at most once a minute as a merge
// patch to the policy's usage ConfigMap (bundle.UsageConfigMapName), from
// which the operator folds ApiKey.status.lastUsedTime.
package usage

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
)

// Recorder keeps the last minute each key ID authenticated. Seen is cheap
// when the minute is already on record: a read lock, a map lookup, an
// atomic load. Safe for concurrent use; a nil Recorder records nothing.
type Recorder struct {
	mu   sync.RWMutex
	last map[string]*atomic.Int64 // key ID → Unix minute

	pubMu     sync.Mutex
	published map[string]int64 // key ID → minute last published
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{last: map[string]*atomic.Int64{}, published: map[string]int64{}}
}

// Seen records that keyID authenticated at now.
func (r *Recorder) Seen(keyID string, now time.Time) {
	if r == nil || keyID == "" {
		return
	}
	minute := now.Unix() / 60
	r.mu.RLock()
	v := r.last[keyID]
	r.mu.RUnlock()
	if v == nil {
		r.mu.Lock()
		if v = r.last[keyID]; v == nil {
			v = &atomic.Int64{}
			r.last[keyID] = v
		}
		r.mu.Unlock()
	}
	for {
		cur := v.Load()
		if cur >= minute || v.CompareAndSwap(cur, minute) {
			return
		}
	}
}

// Forget drops key IDs that keep is false for (keys gone from the bundle).
func (r *Recorder) Forget(keep func(keyID string) bool) {
	if r == nil {
		return
	}
	r.mu.Lock()
	for k := range r.last {
		if !keep(k) {
			delete(r.last, k)
		}
	}
	r.mu.Unlock()
	r.pubMu.Lock()
	for k := range r.published {
		if !keep(k) {
			delete(r.published, k)
		}
	}
	r.pubMu.Unlock()
}

// Changes returns the entries whose minute advanced since they were last
// published: key ID → the minute in RFC 3339 (UTC).
func (r *Recorder) Changes() map[string]string {
	out := map[string]string{}
	if r == nil {
		return out
	}
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	r.mu.RLock()
	defer r.mu.RUnlock()
	for k, v := range r.last {
		if m := v.Load(); m > r.published[k] {
			out[k] = FormatMinute(m)
		}
	}
	return out
}

// Published marks changes (from Changes) as written.
func (r *Recorder) Published(changes map[string]string) {
	if r == nil {
		return
	}
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	for k, v := range changes {
		if t, err := time.Parse(time.RFC3339, v); err == nil && t.Unix()/60 > r.published[k] {
			r.published[k] = t.Unix() / 60
		}
	}
}

// FormatMinute is the ConfigMap form of a Unix minute.
func FormatMinute(minute int64) string {
	return time.Unix(minute*60, 0).UTC().Format(time.RFC3339)
}

// Sink writes usage entries (a merge patch adding or raising them).
type Sink interface {
	Publish(ctx context.Context, entries map[string]string) error
}

// Publisher publishes a Recorder's changes to a Sink every Interval (default,
// and at most, once a minute), only when there are changes; a failed write
// is retried at the next tick with everything still unpublished.
type Publisher struct {
	Recorder *Recorder
	Sink     Sink
	Clock    clock.WithTicker
	Interval time.Duration
	// OnError reports a failed write (default: ignored).
	OnError func(error)
}

// Run publishes until ctx ends, then once more (best effort), so a draining
// sidecar does not lose its last minute.
func (p *Publisher) Run(ctx context.Context) {
	if p.Clock == nil {
		p.Clock = clock.RealClock{}
	}
	if p.Interval < time.Minute {
		p.Interval = time.Minute
	}
	t := p.Clock.NewTicker(p.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			p.PublishOnce(final)
			cancel()
			return
		case <-t.C():
			p.PublishOnce(ctx)
		}
	}
}

// PublishOnce writes the current changes, if any, and reports whether it wrote.
func (p *Publisher) PublishOnce(ctx context.Context) bool {
	changes := p.Recorder.Changes()
	if len(changes) == 0 {
		return false
	}
	if err := p.Sink.Publish(ctx, changes); err != nil {
		if p.OnError != nil {
			p.OnError(err)
		}
		return false
	}
	p.Recorder.Published(changes)
	return true
}

// ConfigMap is a Sink that merge-patches the usage ConfigMap's data. The
// operator creates the ConfigMap; the sidecar's Role allows patching it, by
// name, and nothing more.
type ConfigMap struct {
	// Client is a core/v1 REST client.
	Client    rest.Interface
	Namespace string
	Name      string
}

// Publish implements Sink.
func (c *ConfigMap) Publish(ctx context.Context, entries map[string]string) error {
	patch, err := json.Marshal(map[string]any{"data": entries})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Client.Patch(types.MergePatchType).Namespace(c.Namespace).Resource("configmaps").Name(c.Name).
		Param("fieldManager", "keygate-sidecar").Body(patch).Do(ctx).Error(); err != nil {
		return fmt.Errorf("patch ConfigMap %s/%s: %w", c.Namespace, c.Name, err)
	}
	return nil
}
