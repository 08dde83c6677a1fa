package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// maxBundleBytes is the largest bundle written: a Secret holds at most 1 MiB
// in all, and the object's metadata needs a little of it.
var maxBundleBytes = 1<<20 - 16<<10 // a variable so that a test can lower it

var errBundleTooLarge = errors.New("bundle exceeds the Secret size limit")

// TokenPolicyReconciler keeps a TokenPolicy's signing keys, revocations
// ConfigMap and bundle Secret current.
type TokenPolicyReconciler struct {
	client.Client
	Clock    clock.PassiveClock
	Recorder recorder.EventRecorder

	// ownWrites maps each bundle Secret to the resourceVersion this process wrote.
	ownWrites sync.Map
	// writing maps each bundle Secret this process is writing to the data
	// it writes, until ownWrites has its resourceVersion: the watch event
	// of a write may arrive before the write's answer (isOwnWriteUnderWay).
	writing sync.Map
	// pacer spaces the shard writes that only add keys.
	pacer additionPacer
	// creds keeps what a pass read of each credentials Secret.
	creds credsMemo
	// shardStates keeps what the passes of each sharded policy built.
	shardStates shardStates
	// incremental lets a sharded policy's pass read only the ApiKeys that
	// changed since the previous one (set up with the watches that name
	// them, setup); otherwise every pass reads every key.
	incremental bool
	// shardSets is, per policy, the shard names last published after which
	// no stale shard was left (deleteStaleShards).
	shardSets sync.Map
}

// +kubebuilder:rbac:groups=keygate.dev,resources=tokenpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=keygate.dev,resources=tokenpolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=keygate.dev,resources=tokenpolicies/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// policyPass carries what one reconciliation learns from phase to phase.
type policyPass struct {
	policy  *keygatev1.TokenPolicy
	signing signingState
	now     time.Time
	trace   passTrace
}

// Reconcile runs the phases in order and writes the status once, at the end.
func (r *TokenPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	policy := &keygatev1.TokenPolicy{}
	if err := r.Get(ctx, req.NamespacedName, policy); err != nil {
		if apierrors.IsNotFound(err) {
			r.creds.forget(req.NamespacedName)
			r.shardStates.forget(req.NamespacedName)
			r.shardSets.Delete(req.NamespacedName)
			r.pacer.forgetPolicy(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !policy.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	before := policy.DeepCopy()
	patch := client.MergeFrom(before)
	pending := false // the bundle is not written yet; the pass is retried
	pass := &policyPass{policy: policy, now: r.Clock.Now().UTC().Truncate(time.Second), trace: passTrace{start: time.Now()}}
	defer func() {
		switch {
		case pending:
		case errors.Is(err, reconcile.TerminalError(nil)):
			policy.Status.ObservedGeneration = policy.Generation // the phase set the conditions
		case err != nil:
			meta.SetStatusCondition(&policy.Status.Conditions, metav1.Condition{Type: keygatev1.ConditionReady,
				Status: metav1.ConditionFalse, Reason: keygatev1.ReasonReconcileFailed,
				Message: "The bundle could not be updated; the operator retries (see its log).", ObservedGeneration: policy.Generation})
		default:
			policy.Status.ObservedGeneration = policy.Generation
		}
		recordReadyTransition(r.Recorder, policy, before.Status.Conditions, policy.Status.Conditions)
		if !equality.Semantic.DeepEqual(before.Status, policy.Status) {
			err = errors.Join(err, client.IgnoreNotFound(r.Status().Patch(ctx, policy, patch)))
		}
		if pending {
			pass.trace.pending = errBundleCacheBehind
		}
		pass.trace.log(ctrl.LoggerFrom(ctx), err)
	}()
	res, err = runPhases(ctx, pass, r.ensureSigning, r.ensureRevocations, r.ensureBundle, r.ensureUsage)
	if errors.Is(err, errBundleCacheBehind) {
		pending = true
		return ctrl.Result{RequeueAfter: ownWriteRetry}, nil
	}
	return res, err
}

// ownedObject stamps the labels and owner reference of a TokenPolicy's child.
func (r *TokenPolicyReconciler) ownedObject(p *keygatev1.TokenPolicy, obj client.Object) error {
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[keygatev1.LabelManagedBy] = keygatev1.ManagedByValue
	labels[keygatev1.LabelTokenPolicy] = p.Name
	obj.SetLabels(labels)
	return controllerutil.SetControllerReference(p, obj, r.Scheme())
}

// getOwned reads a child of the policy; found is false when it does not
// exist. A same-named object owned by someone else is an error.
func (r *TokenPolicyReconciler) getOwned(ctx context.Context, p *keygatev1.TokenPolicy, obj client.Object, name string, opts ...client.GetOption) (found bool, err error) {
	if err := r.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: name}, obj, opts...); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("read %q: %w", name, err)
	}
	if !metav1.IsControlledBy(obj, p) {
		return false, fmt.Errorf("%q exists and is not owned by TokenPolicy %q", name, p.Name)
	}
	return true, nil
}

// ensureSigning makes the hash key and the signing keys, rotating them on
// schedule or when the algorithm changes.
func (r *TokenPolicyReconciler) ensureSigning(ctx context.Context, pass *policyPass) (ctrl.Result, error) {
	p := pass.policy
	name := signingSecretName(p.Name)
	secret := &corev1.Secret{}
	found, err := r.getOwned(ctx, p, secret, name)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("signing Secret: %w", err)
	}
	var st signingState
	if found {
		if st, err = readSigning(secret); err != nil {
			return ctrl.Result{}, fmt.Errorf("signing Secret %q: %w", name, err)
		}
	}
	next, rotated, err := nextSigning(p, st, pass.now)
	if err != nil {
		return ctrl.Result{}, err
	}
	desired := secret.DeepCopy()
	if !found {
		desired = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: name}}
	}
	if err := writeSigning(desired, next); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.ownedObject(p, desired); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeChild(ctx, found, secret, desired); err != nil {
		return ctrl.Result{}, fmt.Errorf("write signing Secret %q: %w", name, err)
	}
	if rotated && found {
		rotationsTotal.WithLabelValues("signing").Inc()
		r.Recorder.Eventf(p, nil, corev1.EventTypeNormal, keygatev1.ReasonSigningRotated, "Rotate",
			"Rotated the signing key to %s (%s); the previous key verifies tokens until it retires", next.Keys[0].KeyID, next.Keys[0].Algorithm)
		ctrl.LoggerFrom(ctx).Info("Rotated TokenPolicy signing key", "kid", next.Keys[0].KeyID)
	}
	pass.signing = next
	p.Status.SigningKeyID = next.Keys[0].KeyID
	return ctrl.Result{RequeueAfter: requeueAt(pass.now, nextSigningEvent(p, next)...)}, nil
}

// writeChild creates desired, or patches it over existing when it changed.
func (r *TokenPolicyReconciler) writeChild(ctx context.Context, found bool, existing, desired client.Object) error {
	if !found {
		return r.Create(ctx, desired, fieldOwner)
	}
	if equality.Semantic.DeepEqual(existing, desired) {
		return nil
	}
	return r.Patch(ctx, desired, client.MergeFromWithOptions(existing, client.MergeFromWithOptimisticLock{}), fieldOwner)
}

// ensureRevocations creates the revocations ConfigMap and prunes the entries
// of tokens that have expired; it wakes up at the next expiry.
func (r *TokenPolicyReconciler) ensureRevocations(ctx context.Context, pass *policyPass) (ctrl.Result, error) {
	p := pass.policy
	name := bundle.RevocationsConfigMapName(p.Name)
	cm := &corev1.ConfigMap{}
	found, err := r.getOwned(ctx, p, cm, name)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("revocations ConfigMap: %w", err)
	}
	kept, next := pruneRevocations(cm.Data, pass.now)
	if pruned := len(cm.Data) - len(kept); found && pruned > 0 {
		if err := r.Patch(ctx, cm, client.RawPatch(types.MergePatchType, removeKeysPatch(cm.Data, kept)), fieldOwner); err != nil {
			return ctrl.Result{}, fmt.Errorf("prune revocations ConfigMap %q: %w", name, err)
		}
		ctrl.LoggerFrom(ctx).V(1).Info("Pruned expired revocations", "configMap", name, "pruned", pruned)
	}
	desired := cm.DeepCopy()
	if !found {
		desired = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: name}}
	}
	if err := r.ownedObject(p, desired); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeChild(ctx, found, cm, desired); err != nil {
		return ctrl.Result{}, fmt.Errorf("write revocations ConfigMap %q: %w", name, err)
	}
	return ctrl.Result{RequeueAfter: requeueAt(pass.now, next)}, nil
}

// removeKeysPatch is a JSON merge patch that deletes the keys of data missing
// from kept, and names nothing else: {"data":{"<jti>":null,...}}. Sidecars
// add revocations to the same ConfigMap at any time, and data is read from a
// cache; a patch computed from the cached object would carry the whole map
// (or "data":null once every cached entry expired) and delete the entries
// added since, revocations a sidecar has already acknowledged.
func removeKeysPatch(data, kept map[string]string) []byte {
	removed := make(map[string]any, len(data)-len(kept))
	for k := range data {
		if _, ok := kept[k]; !ok {
			removed[k] = nil
		}
	}
	patch, _ := json.Marshal(map[string]any{"data": removed}) // a map of strings to nil always marshals
	return patch
}

// pruneRevocations drops entries whose token expired, with the sidecars'
// leeway (bundle.TokenLeeway), at or before now, and returns the soonest such
// time left. Unparseable expiries are kept (a sidecar
// refusing a token for too long is safer than forgetting a revocation).
func pruneRevocations(data map[string]string, now time.Time) (map[string]string, time.Time) {
	kept := make(map[string]string, len(data))
	var next time.Time
	for jti, v := range data {
		exp, err := time.Parse(time.RFC3339, v)
		if err != nil {
			kept[jti] = v
			continue
		}
		// Sidecars accept a token until exp + TokenLeeway; a revocation
		// pruned earlier would let the revoked token back in meanwhile.
		exp = exp.Add(bundle.TokenLeeway)
		if !now.Before(exp) {
			continue
		}
		kept[jti] = v
		if next.IsZero() || exp.Before(next) {
			next = exp
		}
	}
	if len(kept) == 0 && data == nil {
		return nil, next
	}
	return kept, next
}
