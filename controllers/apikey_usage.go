package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch

// usageVerdict is what a key's status says about its use.
type usageVerdict struct {
	// LastUsed is the later of the status's and the reported minute.
	LastUsed *metav1.Time
	// Stale is the Stale condition, nil when it does not apply (no
	// staleAfter, or the key is not Ready).
	Stale *metav1.Condition
	// StaleAt is when a fresh key turns stale (zero: never).
	StaleAt time.Time
}

// maxClockSkew bounds how far in the future a reported minute may be: a
// sidecar with a clock ahead cannot push lastUsedTime beyond it.
const maxClockSkew = 2 * time.Minute

// decideUsage folds the minute the sidecars reported (RFC 3339, "" when none)
// into the key's last use and decides Stale. A key never used counts from its
// creation.
func decideUsage(key *keygatev1.ApiKey, staleAfter time.Duration, reported string, now time.Time) usageVerdict {
	v := usageVerdict{LastUsed: key.Status.LastUsedTime}
	if t, err := time.Parse(time.RFC3339, reported); err == nil && !t.After(now.Add(maxClockSkew)) {
		if v.LastUsed == nil || t.After(v.LastUsed.Time) {
			v.LastUsed = &metav1.Time{Time: t.UTC()}
		}
	}
	if staleAfter <= 0 || !meta.IsStatusConditionTrue(key.Status.Conditions, keygatev1.ConditionReady) {
		return v
	}
	since, what := key.CreationTimestamp.Time, "created"
	if v.LastUsed != nil {
		since, what = v.LastUsed.Time, "last used"
	}
	staleAt := since.Add(staleAfter)
	c := &metav1.Condition{Type: keygatev1.ConditionStale, ObservedGeneration: key.Generation}
	if now.Before(staleAt) {
		c.Status, c.Reason = metav1.ConditionFalse, keygatev1.ReasonRecentlyUsed
		c.Message = fmt.Sprintf("The key was %s at %s, within staleAfter (%s).", what, since.UTC().Format(time.RFC3339), staleAfter)
		v.StaleAt = staleAt
	} else {
		c.Status, c.Reason = metav1.ConditionTrue, keygatev1.ReasonUnused
		c.Message = fmt.Sprintf("No request has authenticated with the key for staleAfter (%s): it was %s at %s. Consider disabling or deleting it.",
			staleAfter, what, since.UTC().Format(time.RFC3339))
	}
	v.Stale = c
	return v
}

// checkUsage folds the policy's usage ConfigMap into status.lastUsedTime and
// keeps the Stale condition; it wakes up when the key would turn stale.
func (r *ApiKeyReconciler) checkUsage(ctx context.Context, pass *keyPass) (ctrl.Result, error) {
	key := pass.key
	policyName := key.Spec.PolicyRef.Name
	var staleAfter time.Duration
	policy := &keygatev1.TokenPolicy{}
	switch err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: policyName}, policy); {
	case err == nil:
		staleAfter = durationOr(policy.Spec.StaleAfter, 0)
	case !apierrors.IsNotFound(err):
		return ctrl.Result{}, fmt.Errorf("read TokenPolicy %q: %w", policyName, err)
	}
	reported := ""
	if key.Status.KeyID != "" {
		cm := &corev1.ConfigMap{}
		switch err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: bundle.UsageConfigMapName(policyName)}, cm); {
		case err == nil:
			reported = cm.Data[key.Status.KeyID]
		case !apierrors.IsNotFound(err):
			return ctrl.Result{}, fmt.Errorf("read usage ConfigMap of TokenPolicy %q: %w", policyName, err)
		}
	}
	now := r.Clock.Now()
	v := decideUsage(key, staleAfter, reported, now)
	key.Status.LastUsedTime = v.LastUsed
	before := meta.FindStatusCondition(key.Status.Conditions, keygatev1.ConditionStale)
	if v.Stale == nil {
		meta.RemoveStatusCondition(&key.Status.Conditions, keygatev1.ConditionStale)
		return ctrl.Result{}, nil
	}
	recordStaleTransition(r.Recorder, key, before, v.Stale)
	meta.SetStatusCondition(&key.Status.Conditions, *v.Stale)
	return ctrl.Result{RequeueAfter: requeueAt(now, v.StaleAt)}, nil
}

// recordStaleTransition emits an Event when a key turns stale, or is used
// again after being stale.
func recordStaleTransition(rec recorder.EventRecorder, key *keygatev1.ApiKey, before, after *metav1.Condition) {
	wasStale := before != nil && before.Status == metav1.ConditionTrue
	isStale := after.Status == metav1.ConditionTrue
	switch {
	case isStale && !wasStale:
		rec.Eventf(key, nil, corev1.EventTypeWarning, after.Reason, "Reconcile", "%s", after.Message)
	case wasStale && !isStale:
		rec.Eventf(key, nil, corev1.EventTypeNormal, after.Reason, "Reconcile", "%s", after.Message)
	}
}
