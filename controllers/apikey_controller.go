package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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

// fieldOwner is the server-side field manager of every write the operator makes.
const fieldOwner = client.FieldOwner("keygate")

// errSecretConflict is returned when the credentials Secret belongs to someone else.
var errSecretConflict = errors.New("credentials Secret is not owned by this ApiKey")

// errCacheBehind is returned when the credentials Secret this ApiKey owns
// exists but the cache has not seen it yet: the pass ends quietly and the
// Secret's arrival in the cache queues the key again.
var errCacheBehind = errors.New("cache not yet up to date")

// cacheBehindRetry re-queues a key whose Secret the cache had not seen,
// should the Secret's watch event not do it first.
const cacheBehindRetry = time.Second

// ApiKeyReconciler keeps an ApiKey's credentials Secret and status current:
// it generates and rotates the secret and decides whether the key is Ready.
type ApiKeyReconciler struct {
	client.Client
	// APIReader reads past the cache; it tells a Secret of someone else from
	// our own one that the cache has not seen yet.
	APIReader client.Reader
	Clock     clock.PassiveClock
	Recorder  recorder.EventRecorder

	// bundles holds the parsed bundle Secrets, one per resourceVersion.
	bundles bundleViews
	// firstPass records when a new key's status write was first deferred
	// (deferNewKeyStatus); a restart only defers it once more.
	firstPass sync.Map
}

// +kubebuilder:rbac:groups=keygate.dev,resources=apikeys,verbs=get;list;watch
// +kubebuilder:rbac:groups=keygate.dev,resources=apikeys/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=keygate.dev,resources=apikeys/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile runs the phases in order and writes the status once, at the end.
func (r *ApiKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	key := &keygatev1.ApiKey{}
	if err := r.Get(ctx, req.NamespacedName, key); err != nil {
		if apierrors.IsNotFound(err) {
			r.firstPass.Delete(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !key.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // the garbage collector removes the credentials Secret
	}
	before := key.DeepCopy()
	// The patch carries the resourceVersion read: from a cached status older
	// than the server's (the cache not yet showing this reconciler's own last
	// write), a merge patch would leave out what is equal in the stale base
	// and the result (the conditions, say) and so keep the server's newer,
	// wrong, values; it is refused instead (a conflict, retried on a cache
	// that caught up; TestStatusFromAStaleCacheIsNotLost).
	patch := client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})
	pass := &keyPass{key: key}
	defer func() {
		if err == nil && pass.deferStatus {
			return
		}
		if err == nil || errors.Is(err, reconcile.TerminalError(nil)) {
			key.Status.ObservedGeneration = key.Generation
		}
		recordReadyTransition(r.Recorder, key, before.Status.Conditions, key.Status.Conditions)
		if equality.Semantic.DeepEqual(before.Status, key.Status) {
			return
		}
		err = errors.Join(err, client.IgnoreNotFound(r.Status().Patch(ctx, key, patch)))
	}()
	res, err = runPhases(ctx, pass, r.ensureCredentials, r.checkReady, r.checkUsage)
	if errors.Is(err, errCacheBehind) {
		// Expected with many workers: a key queued again right after it
		// created its Secret. Nothing is wrong; no status, no error log.
		pass.deferStatus = true
		return ctrl.Result{RequeueAfter: cacheBehindRetry}, nil
	}
	return res, err
}

// keyPass carries what one reconciliation learns from phase to phase.
type keyPass struct {
	key *keygatev1.ApiKey
	// creds are the credentials the key's Secret holds after ensureCredentials.
	creds credentials
	// deferStatus skips this pass's status write (see deferNewKeyStatus).
	deferStatus bool
}

// runPhases runs phases until one fails and returns the soonest requeue.
func runPhases[T any](ctx context.Context, obj T, phases ...func(context.Context, T) (ctrl.Result, error)) (ctrl.Result, error) {
	var res ctrl.Result
	for _, phase := range phases {
		r, err := phase(ctx, obj)
		if err != nil {
			return ctrl.Result{}, err
		}
		if r.RequeueAfter > 0 && (res.RequeueAfter == 0 || r.RequeueAfter < res.RequeueAfter) {
			res.RequeueAfter = r.RequeueAfter
		}
	}
	return res, nil
}

// ensureCredentials creates, repairs or rotates the credentials Secret and
// mirrors its bookkeeping into the status.
func (r *ApiKeyReconciler) ensureCredentials(ctx context.Context, pass *keyPass) (ctrl.Result, error) {
	key := pass.key
	log := ctrl.LoggerFrom(ctx)
	now := r.Clock.Now().UTC().Truncate(time.Second)
	name := credentialsSecretName(key)
	oldName := key.Status.SecretName
	key.Status.SecretName = name

	secret := &corev1.Secret{}
	var cur, moved *credentials
	switch err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: name}, secret); {
	case apierrors.IsNotFound(err):
		secret = nil
		if moved, err = r.movedCredentials(ctx, key, oldName, name); err != nil {
			return ctrl.Result{}, err
		}
		cur = moved
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("read credentials Secret %q: %w", name, err)
	case !metav1.IsControlledBy(secret, key):
		return ctrl.Result{}, r.secretConflict(key, name)
	default:
		unfoldCredentials(secret) // our copy: compared with and patched from below, as the server holds it
		c := readCredentials(secret)
		cur = &c
	}

	trigger := decideRotation(key, cur, now)
	var next credentials
	switch trigger {
	case triggerNone:
		next = *cur
		next.Previous = livePrevious(cur, now)
	default:
		var err error
		if next, err = r.newCredentials(ctx, key, cur, trigger, now); err != nil {
			return ctrl.Result{}, err
		}
	}

	created, err := r.writeSecret(ctx, key, secret, name, next)
	if err != nil {
		return ctrl.Result{}, err
	}
	if created {
		log.Info("Created credentials Secret", "secret", name, "keyID", next.KeyID, "secretVersion", next.Version)
	}
	if moved != nil {
		old := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: oldName}}
		if err := r.Delete(ctx, old); client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, fmt.Errorf("delete credentials Secret %q after moving it to %q: %w", oldName, name, err)
		}
		log.Info("Moved credentials Secret", "from", oldName, "to", name, "keyID", next.KeyID)
	}
	r.afterRotation(key, trigger, next)
	pass.creds = next

	key.Status.KeyID = next.KeyID
	key.Status.SecretVersion = next.Version
	key.Status.LastRotationTime = &metav1.Time{Time: next.RotatedAt}
	key.Status.LastRotateRequest = next.RotateHandled
	key.Status.PreviousSecretExpiresAt = nil
	var expiry time.Time
	if next.Previous != nil {
		key.Status.PreviousSecretExpiresAt = &metav1.Time{Time: next.Previous.ExpiresAt}
		expiry = next.Previous.ExpiresAt
	}
	meta.RemoveStatusCondition(&key.Status.Conditions, keygatev1.ConditionStalled)
	due, _ := scheduledRotation(key, &next)
	return ctrl.Result{RequeueAfter: requeueAt(now, due, expiry)}, nil
}

// movedCredentials returns the credentials of the Secret the key used before
// spec.secretName changed, so that they move to the new name unchanged; nil
// when there is nothing (intact and ours) to move.
func (r *ApiKeyReconciler) movedCredentials(ctx context.Context, key *keygatev1.ApiKey, oldName, name string) (*credentials, error) {
	if oldName == "" || oldName == name {
		return nil, nil
	}
	old := &corev1.Secret{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: oldName}, old); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read previous credentials Secret %q: %w", oldName, err)
	}
	if !metav1.IsControlledBy(old, key) {
		return nil, nil
	}
	c := readCredentials(old)
	if !c.Intact {
		return nil, nil
	}
	return &c, nil
}

// newCredentials makes the credentials that replace cur. The key ID is kept;
// on a rotation the current secret's digest (with the policy's hash key)
// stays valid for the grace period.
func (r *ApiKeyReconciler) newCredentials(ctx context.Context, key *keygatev1.ApiKey, cur *credentials, trigger rotationTrigger, now time.Time) (credentials, error) {
	next := credentials{Version: 1, RotatedAt: now, Intact: true}
	next.KeyID = key.Status.KeyID
	if cur != nil && cur.Intact {
		next.KeyID = cur.KeyID
	}
	if next.KeyID == "" {
		id, err := newKeyID()
		if err != nil {
			return credentials{}, err
		}
		next.KeyID = id
	}
	if cur != nil && cur.Version >= next.Version {
		next.Version = cur.Version + 1
	}
	if key.Status.SecretVersion >= next.Version {
		next.Version = key.Status.SecretVersion + 1
	}
	secret, err := newSecret()
	if err != nil {
		return credentials{}, err
	}
	next.Secret = secret
	next.RotateHandled = handledRotateRequest(key, cur)
	if trigger == triggerInitial || trigger == triggerManual {
		next.RotateHandled = key.Annotations[keygatev1.AnnotationRotate]
	}
	if (trigger == triggerManual || trigger == triggerScheduled) && gracePeriod(key) > 0 {
		hashKey, err := r.policyHashKey(ctx, key)
		if err != nil {
			return credentials{}, err
		}
		if hashKey != nil { // no policy yet: the key was in no bundle, nothing to keep valid
			next.Previous = &previousSecret{
				Digest:    bundle.Digest(hashKey, cur.Secret),
				Version:   cur.Version,
				ExpiresAt: graceEnd(r.Clock.Now(), gracePeriod(key)), // now is truncated to the second
				HashKeyID: hashKeyID(hashKey),
			}
		}
	}
	return next, nil
}

// policyHashKey reads the HMAC key of the key's policy, nil if there is none yet.
func (r *ApiKeyReconciler) policyHashKey(ctx context.Context, key *keygatev1.ApiKey) ([]byte, error) {
	s := &corev1.Secret{}
	name := signingSecretName(key.Spec.PolicyRef.Name)
	if err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read signing Secret %q: %w", name, err)
	}
	hk := s.Data[signingHashKey]
	if len(hk) < hashKeyLength {
		return nil, nil
	}
	return hk, nil
}

// writeSecret creates the credentials Secret, or patches it when its content
// differs from next; an unchanged Secret is not written.
func (r *ApiKeyReconciler) writeSecret(ctx context.Context, key *keygatev1.ApiKey, existing *corev1.Secret, name string, next credentials) (created bool, err error) {
	desired := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: name}}
	if existing != nil {
		desired = existing.DeepCopy()
	}
	if desired.Labels == nil {
		desired.Labels = map[string]string{}
	}
	desired.Labels[keygatev1.LabelManagedBy] = keygatev1.ManagedByValue
	desired.Labels[keygatev1.LabelApiKey] = key.Name
	desired.Labels[keygatev1.LabelTokenPolicy] = key.Spec.PolicyRef.Name
	writeCredentials(desired, next)
	if err := controllerutil.SetControllerReference(key, desired, r.Scheme()); err != nil {
		return false, fmt.Errorf("set owner of credentials Secret %q: %w", name, err)
	}
	if existing == nil {
		if err := r.Create(ctx, desired, fieldOwner); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return false, r.alreadyExists(ctx, key, name)
			}
			return false, fmt.Errorf("create credentials Secret %q: %w", name, err)
		}
		return true, nil
	}
	if equality.Semantic.DeepEqual(existing.Data, desired.Data) &&
		equality.Semantic.DeepEqual(existing.Labels, desired.Labels) &&
		equality.Semantic.DeepEqual(existing.Annotations, desired.Annotations) &&
		equality.Semantic.DeepEqual(existing.OwnerReferences, desired.OwnerReferences) &&
		existing.Type == desired.Type {
		return false, nil
	}
	if err := r.Patch(ctx, desired, client.MergeFromWithOptions(existing, client.MergeFromWithOptimisticLock{}), fieldOwner); err != nil {
		return false, fmt.Errorf("update credentials Secret %q: %w", name, err)
	}
	return false, nil
}

// alreadyExists explains a failed create: either the cache has not caught up
// with our own Secret (retry), or the name belongs to someone else.
func (r *ApiKeyReconciler) alreadyExists(ctx context.Context, key *keygatev1.ApiKey, name string) error {
	if r.APIReader != nil {
		live := &metav1.PartialObjectMetadata{}
		live.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: name}, live)
		if err == nil && metav1.IsControlledBy(live, key) {
			return fmt.Errorf("credentials Secret %q: %w", name, errCacheBehind)
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("read credentials Secret %q: %w", name, err)
		}
	}
	return r.secretConflict(key, name)
}

// afterRotation records a rotation in Events and metrics (key names only).
func (r *ApiKeyReconciler) afterRotation(key *keygatev1.ApiKey, trigger rotationTrigger, next credentials) {
	switch trigger {
	case triggerManual, triggerScheduled:
		grace := "the previous secret stops working at once"
		if next.Previous != nil {
			grace = "the previous secret works until " + next.Previous.ExpiresAt.Format(time.RFC3339)
		}
		r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, keygatev1.ReasonRotated, "Rotate",
			"Rotated the secret of key %s (%s rotation) to version %d; %s", next.KeyID, trigger, next.Version, grace)
	case triggerReplaced:
		r.Recorder.Eventf(key, nil, corev1.EventTypeWarning, keygatev1.ReasonSecretReplaced, "Rotate",
			"Credentials Secret %s was deleted or edited; wrote a new secret for key %s, version %d", credentialsSecretName(key), next.KeyID, next.Version)
	default:
		return
	}
	rotationsTotal.WithLabelValues(string(trigger)).Inc()
}

// secretConflict marks the key Stalled: its Secret name is taken.
func (r *ApiKeyReconciler) secretConflict(key *keygatev1.ApiKey, name string) error {
	msg := fmt.Sprintf("Secret %q exists and is not owned by this ApiKey; choose another spec.secretName or delete that Secret.", name)
	for _, t := range []string{keygatev1.ConditionReady, keygatev1.ConditionStalled} {
		status := metav1.ConditionFalse
		if t == keygatev1.ConditionStalled {
			status = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&key.Status.Conditions, metav1.Condition{Type: t, Status: status,
			Reason: keygatev1.ReasonSecretConflict, Message: msg, ObservedGeneration: key.Generation})
	}
	return reconcile.TerminalError(fmt.Errorf("secret %q: %w", name, errSecretConflict))
}

// recordReadyTransition emits an Event, with the condition's reason and
// message, when the Ready condition changes status or reason. An object that
// is Ready at once gets none: 1,000 new keys would otherwise make 1,000 Events.
func recordReadyTransition(rec recorder.EventRecorder, obj runtime.Object, before, after []metav1.Condition) {
	old := meta.FindStatusCondition(before, keygatev1.ConditionReady)
	cur := meta.FindStatusCondition(after, keygatev1.ConditionReady)
	if cur == nil || (old != nil && old.Reason == cur.Reason && old.Status == cur.Status) {
		return
	}
	// NotInBundle is the short wait for the next bundle (a new key, a
	// rotation): neither entering it nor leaving it for Ready is news.
	if cur.Reason == keygatev1.ReasonNotInBundle || (old != nil && old.Reason == keygatev1.ReasonNotInBundle && cur.Status == metav1.ConditionTrue) {
		return
	}
	if old == nil && cur.Status == metav1.ConditionTrue {
		return
	}
	typ := corev1.EventTypeWarning
	if cur.Status == metav1.ConditionTrue {
		typ = corev1.EventTypeNormal
	}
	rec.Eventf(obj, nil, typ, cur.Reason, "Reconcile", "%s", cur.Message)
}
