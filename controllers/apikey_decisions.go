package controllers

import (
	"fmt"
	"sort"
	"time"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// The small pure functions in this file decide what the ApiKey and
// TokenPolicy reconcilers do; both call them so they always agree.

// defaultGracePeriod is how long a previous secret keeps working by default.
const defaultGracePeriod = 24 * time.Hour

// rotationTrigger says why the credentials Secret must be (re)written.
type rotationTrigger string

const (
	triggerNone      rotationTrigger = ""
	triggerInitial   rotationTrigger = "initial"
	triggerReplaced  rotationTrigger = "replaced"
	triggerManual    rotationTrigger = "manual"
	triggerScheduled rotationTrigger = "scheduled"
)

// decideRotation chooses what to do with a key's credentials. cur is nil when
// the credentials Secret does not exist.
func decideRotation(key *keygatev1.ApiKey, cur *credentials, now time.Time) rotationTrigger {
	switch {
	case cur == nil && key.Status.SecretVersion == 0 && key.Status.KeyID == "":
		return triggerInitial
	case cur == nil || !cur.Intact:
		return triggerReplaced
	case rotateRequested(key, cur):
		return triggerManual
	}
	if due, ok := scheduledRotation(key, cur); ok && !now.Before(due) {
		return triggerScheduled
	}
	return triggerNone
}

// rotateRequested is true when the keygate.dev/rotate annotation holds a
// value not acted on yet.
func rotateRequested(key *keygatev1.ApiKey, cur *credentials) bool {
	req := key.Annotations[keygatev1.AnnotationRotate]
	return req != "" && req != handledRotateRequest(key, cur)
}

// handledRotateRequest is the last rotate annotation value acted on: the
// credentials Secret's record first (written together with the secret, so it
// survives a lost status patch), else the status.
func handledRotateRequest(key *keygatev1.ApiKey, cur *credentials) string {
	if cur != nil && cur.RotateHandled != "" {
		return cur.RotateHandled
	}
	return key.Status.LastRotateRequest
}

// scheduledRotation is when spec.rotation.interval next rotates the secret.
func scheduledRotation(key *keygatev1.ApiKey, cur *credentials) (time.Time, bool) {
	r := key.Spec.Rotation
	if r == nil || r.Interval == nil || r.Interval.Duration <= 0 {
		return time.Time{}, false
	}
	return cur.RotatedAt.Add(r.Interval.Duration), true
}

// gracePeriod is how long the previous secret works after a rotation.
func gracePeriod(key *keygatev1.ApiKey) time.Duration {
	if r := key.Spec.Rotation; r != nil && r.GracePeriod != nil {
		return max(r.GracePeriod.Duration, 0)
	}
	return defaultGracePeriod
}

// graceEnd is when a previous secret stops working: now + grace, rounded up to
// the whole second, because the end is stored (Secret annotation, status,
// bundle) in RFC 3339 seconds and truncating it would end the grace early.
func graceEnd(now time.Time, grace time.Duration) time.Time {
	end := now.Add(grace)
	if t := end.Truncate(time.Second); t.Before(end) {
		return t.Add(time.Second)
	}
	return end
}

// livePrevious is the previous secret if its grace period still runs at now.
func livePrevious(cur *credentials, now time.Time) *previousSecret {
	if cur == nil || cur.Previous == nil || !now.Before(cur.Previous.ExpiresAt) {
		return nil
	}
	return cur.Previous
}

// earliest returns the soonest of the times after now, and whether there is one.
func earliest(now time.Time, times ...time.Time) (time.Time, bool) {
	var best time.Time
	for _, t := range times {
		if t.IsZero() || !t.After(now) {
			continue
		}
		if best.IsZero() || t.Before(best) {
			best = t
		}
	}
	return best, !best.IsZero()
}

// requeueAt turns the soonest future time into a RequeueAfter duration (0: none).
func requeueAt(now time.Time, times ...time.Time) time.Duration {
	t, ok := earliest(now, times...)
	if !ok {
		return 0
	}
	return t.Sub(now)
}

// verdict is whether a key is accepted by its policy, and if not why.
type verdict struct {
	Ready   bool
	Reason  string
	Message string
}

// admit decides for every ApiKey of one policy whether it is accepted. policy
// is nil when the TokenPolicy does not exist. Keys being deleted are ignored.
// Disabled and expired keys take no place; of the others the oldest by
// creation time (ties broken by name) are accepted up to maxApiKeys, and the
// newest beyond it are refused, so the outcome is the same on every pass.
func admit(keys []keygatev1.ApiKey, policy *keygatev1.TokenPolicy, now time.Time) map[string]verdict {
	return admitOrdered(keys, policy, now).verdicts
}

// admission is admit's outcome: a verdict per key, the accepted keys in
// admission order, and, when the limit refused some, the last key accepted.
type admission struct {
	verdicts map[string]verdict
	accepted []*keygatev1.ApiKey
	limitCut *keygatev1.ApiKey
}

func admitOrdered(keys []keygatev1.ApiKey, policy *keygatev1.TokenPolicy, now time.Time) admission {
	out := admission{verdicts: make(map[string]verdict, len(keys))}
	eligible := make([]*keygatev1.ApiKey, 0, len(keys))
	for i := range keys {
		k := &keys[i]
		if !k.DeletionTimestamp.IsZero() {
			continue
		}
		if v, ok := localVerdict(k, policy, now); !ok {
			out.verdicts[k.Name] = v
			continue
		}
		eligible = append(eligible, k)
	}
	if policy == nil {
		return out
	}
	sort.Slice(eligible, func(i, j int) bool { return admittedBefore(eligible[i], eligible[j]) })
	limit := maxApiKeys(policy)
	for i, k := range eligible {
		if i < limit {
			out.verdicts[k.Name] = verdict{Ready: true, Reason: keygatev1.ReasonReady,
				Message: fmt.Sprintf("The key is accepted by TokenPolicy %q.", policy.Name)}
			out.accepted = append(out.accepted, k)
			continue
		}
		out.verdicts[k.Name] = limitVerdict(policy)
	}
	if len(eligible) > limit {
		out.limitCut = eligible[limit-1]
	}
	return out
}

// localVerdict decides what a key's own spec and its policy's existence
// decide; ok is true when the key is eligible and only its place among its
// siblings (the limit, the bundle's size) is left to decide.
func localVerdict(k *keygatev1.ApiKey, policy *keygatev1.TokenPolicy, now time.Time) (v verdict, ok bool) {
	switch {
	case k.Spec.Disabled:
		return verdict{Reason: keygatev1.ReasonDisabled, Message: "The key is disabled (spec.disabled is true)."}, false
	case k.Spec.ExpiresAt != nil && !now.Before(k.Spec.ExpiresAt.Time):
		return verdict{Reason: keygatev1.ReasonExpired,
			Message: fmt.Sprintf("The key expired at %s (spec.expiresAt).", k.Spec.ExpiresAt.UTC().Format(time.RFC3339))}, false
	case policy == nil:
		return verdict{Reason: keygatev1.ReasonPolicyNotFound,
			Message: fmt.Sprintf("TokenPolicy %q does not exist in namespace %q.", k.Spec.PolicyRef.Name, k.Namespace)}, false
	}
	return verdict{}, true
}

// limitVerdict refuses a key because older keys use all of the policy's places.
func limitVerdict(policy *keygatev1.TokenPolicy) verdict {
	limit := maxApiKeys(policy)
	return verdict{Reason: keygatev1.ReasonLimitExceeded,
		Message: fmt.Sprintf("TokenPolicy %q accepts at most %d ApiKeys (spec.maxApiKeys) and %d older keys use them; delete or disable one, or raise the limit.",
			policy.Name, limit, limit)}
}

// admittedBefore is the admission order: oldest first by creation time, ties
// broken by name.
func admittedBefore(a, b *keygatev1.ApiKey) bool {
	return orderBefore(a.CreationTimestamp.Time, a.Name, b.CreationTimestamp.Time, b.Name)
}

func orderBefore(at time.Time, an string, bt time.Time, bn string) bool {
	if !at.Equal(bt) {
		return at.Before(bt)
	}
	return an < bn
}

// defaultMaxApiKeys mirrors the CRD default of spec.maxApiKeys.
const defaultMaxApiKeys = 40

func maxApiKeys(p *keygatev1.TokenPolicy) int {
	if p.Spec.MaxApiKeys <= 0 {
		return defaultMaxApiKeys
	}
	return int(p.Spec.MaxApiKeys)
}
