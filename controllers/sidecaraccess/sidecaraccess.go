// Package sidecaraccess gives injected sidecars exactly the API access they
// need: for each TokenPolicy that injected pods use, a Role allowing
// get/list/watch on the policy's bundle Secret, get/list/watch/patch on its
// revocations ConfigMap and patch on its usage ConfigMap, all by name, and a RoleBinding of that Role to the
// service accounts of those pods. The TokenPolicy owns both objects; they go
// when no injected pod of the policy is left, or with the policy.
package sidecaraccess

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

const (
	// SidecarContainerName is the injected sidecar's name; its --policy= argument
	// (immutable once the pod exists) says which policy a pod's sidecar enforces.
	SidecarContainerName = "keygate-sidecar"
	policyArg            = "--policy="
	// LabelComponent marks the Roles and RoleBindings of this package.
	LabelComponent = "app.kubernetes.io/component"
	// ComponentValue is LabelComponent's value.
	ComponentValue = "sidecar-access"
)

// RoleName is the name of the Role and RoleBinding of a policy's sidecars.
func RoleName(policy string) string { return "keygate-" + policy + "-sidecar" }

// Reconciler keeps the Role and RoleBinding of one TokenPolicy's sidecars.
type Reconciler struct {
	// Client writes, and reads TokenPolicies (the manager's client).
	Client client.Client
	// Cache reads labelled pods and keygate's Roles and RoleBindings.
	Cache  client.Reader
	Scheme *runtime.Scheme
}

// alwaysRunning starts a cache on every replica, leader or not (the uninjected
// pods gauge reads it on every replica).
type alwaysRunning struct{ cache.Cache }

func (alwaysRunning) NeedLeaderElection() bool { return false }

// NewCache returns a cache of only the objects this package reads: pods
// labelled keygate.dev/inject=true (stripped to their metadata, service
// account, sidecar arguments and phase) and keygate's sidecar Roles and
// RoleBindings; namespaces limits it when not empty. It is added to mgr.
func NewCache(mgr ctrl.Manager, namespaces []string) (cache.Cache, error) {
	var nsConfig map[string]cache.Config
	if len(namespaces) > 0 {
		nsConfig = map[string]cache.Config{}
		for _, ns := range namespaces {
			nsConfig[ns] = cache.Config{}
		}
	}
	owned := labels.SelectorFromSet(labels.Set{keygatev1.LabelManagedBy: keygatev1.ManagedByValue, LabelComponent: ComponentValue})
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		DefaultNamespaces: nsConfig,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {
				Label:     labels.SelectorFromSet(labels.Set{keygatev1.LabelInject: "true"}),
				Transform: stripPod,
			},
			&rbacv1.Role{}:        {Label: owned},
			&rbacv1.RoleBinding{}: {Label: owned},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("create sidecar access cache: %w", err)
	}
	if err := mgr.Add(alwaysRunning{c}); err != nil {
		return nil, fmt.Errorf("add sidecar access cache: %w", err)
	}
	return c, nil
}

// stripPod keeps what the reconciler and the gauge read.
func stripPod(o any) (any, error) {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return o, nil
	}
	out := &corev1.Pod{ObjectMeta: pod.ObjectMeta}
	out.ManagedFields = nil
	out.Spec.ServiceAccountName = pod.Spec.ServiceAccountName
	for _, c := range pod.Spec.InitContainers {
		if c.Name == SidecarContainerName {
			out.Spec.InitContainers = []corev1.Container{{Name: c.Name, Args: c.Args}}
		}
	}
	out.Status.Phase = pod.Status.Phase
	return out, nil
}

// SetupWithManager registers the reconciler; c is NewCache's cache.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, c cache.Cache) error {
	owner := func() handler.TypedEventHandler[client.Object, reconcile.Request] {
		return handler.TypedEnqueueRequestForOwner[client.Object](mgr.GetScheme(), mgr.GetRESTMapper(), &keygatev1.TokenPolicy{}, handler.OnlyControllerOwner())
	}
	err := ctrl.NewControllerManagedBy(mgr).
		Named("sidecaraccess").
		For(&keygatev1.TokenPolicy{}).
		WatchesRawSource(source.Kind(c, client.Object(&corev1.Pod{}), handler.TypedEnqueueRequestsFromMapFunc(policyOfPod))).
		WatchesRawSource(source.Kind(c, client.Object(&rbacv1.Role{}), owner())).
		WatchesRawSource(source.Kind(c, client.Object(&rbacv1.RoleBinding{}), owner())).
		Complete(r)
	if err != nil {
		return fmt.Errorf("set up sidecar access controller: %w", err)
	}
	return nil
}

func policyOfPod(_ context.Context, o client.Object) []reconcile.Request {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return nil
	}
	if p := sidecarPolicy(pod); p != "" {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: pod.Namespace, Name: p}}}
	}
	return nil
}

// sidecarPolicy is the policy the pod's injected sidecar enforces, "" if none.
func sidecarPolicy(pod *corev1.Pod) string {
	for _, c := range pod.Spec.InitContainers {
		if c.Name != SidecarContainerName {
			continue
		}
		for _, a := range c.Args {
			if p, ok := strings.CutPrefix(a, policyArg); ok {
				return p
			}
		}
	}
	return ""
}

// Reconcile keeps the Role and RoleBinding of one TokenPolicy.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	policy := &keygatev1.TokenPolicy{}
	if err := r.Client.Get(ctx, req.NamespacedName, policy); err != nil {
		// Gone: its Role and RoleBinding go with it (owner references).
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	accounts, err := r.serviceAccounts(ctx, req.Namespace, req.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(accounts) == 0 || !policy.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.remove(ctx, req.NamespacedName)
	}
	role, err := r.desiredRole(ctx, policy)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := ensure(ctx, r, role, func(have *rbacv1.Role) bool {
		if equality.Semantic.DeepEqual(have.Rules, role.Rules) && sameMeta(have, role) {
			return false
		}
		have.Rules, have.Labels, have.OwnerReferences = role.Rules, role.Labels, role.OwnerReferences
		return true
	}); err != nil {
		return ctrl.Result{}, err
	}
	binding, err := r.desiredBinding(policy, accounts)
	if err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, ensure(ctx, r, binding, func(have *rbacv1.RoleBinding) bool {
		if equality.Semantic.DeepEqual(have.Subjects, binding.Subjects) && sameMeta(have, binding) {
			return false
		}
		have.Subjects, have.Labels, have.OwnerReferences = binding.Subjects, binding.Labels, binding.OwnerReferences
		return true
	})
}

// serviceAccounts are the sorted, distinct service accounts of the pods whose
// sidecar enforces policy.
func (r *Reconciler) serviceAccounts(ctx context.Context, namespace, policy string) ([]string, error) {
	pods := &corev1.PodList{}
	if err := r.Cache.List(ctx, pods, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var out []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if sidecarPolicy(p) != policy || !p.DeletionTimestamp.IsZero() {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		out = append(out, sa)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func objectMeta(policy *keygatev1.TokenPolicy) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      RoleName(policy.Name),
		Namespace: policy.Namespace,
		Labels: map[string]string{
			keygatev1.LabelManagedBy:   keygatev1.ManagedByValue,
			keygatev1.LabelTokenPolicy: policy.Name,
			LabelComponent:             ComponentValue,
		},
	}
}

// Rules are the sidecar's permissions for policy: nothing but its own bundle
// Secret (and the shards of a sharded bundle) and revocations ConfigMap, by name.
func Rules(policy string, shards ...string) []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: append([]string{bundle.SecretName(policy)}, shards...),
			Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{bundle.RevocationsConfigMapName(policy)},
			Verbs: []string{"get", "list", "watch", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{bundle.UsageConfigMapName(policy)},
			Verbs: []string{"patch"}},
	}
}

func (r *Reconciler) desiredRole(ctx context.Context, policy *keygatev1.TokenPolicy) (*rbacv1.Role, error) {
	shards, err := r.shardNames(ctx, policy)
	if err != nil {
		return nil, err
	}
	role := &rbacv1.Role{ObjectMeta: objectMeta(policy), Rules: Rules(policy.Name, shards...)}
	if err := controllerutil.SetControllerReference(policy, role, r.Scheme); err != nil {
		return nil, fmt.Errorf("own Role: %w", err)
	}
	return role, nil
}

// shardNames are the shard Secrets a sidecar of policy may need: those of
// the shard count its spec asks for, which the operator writes before the
// index names them, and those the published index names now (the previous
// count, until the operator has switched over), sorted.
func (r *Reconciler) shardNames(ctx context.Context, policy *keygatev1.TokenPolicy) ([]string, error) {
	names := bundle.ShardNames(policy.Name, bundle.ShardCount(int(policy.Spec.MaxApiKeys)))
	index := &corev1.Secret{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: policy.Namespace, Name: bundle.SecretName(policy.Name)}, index)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("read bundle Secret: %w", err)
	case metav1.IsControlledBy(index, policy):
		var doc struct {
			Shards []string `json:"shards"`
		}
		if json.Unmarshal(index.Data[bundle.SecretDataKey], &doc) == nil {
			names = append(names, doc.Shards...)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

func (r *Reconciler) desiredBinding(policy *keygatev1.TokenPolicy, accounts []string) (*rbacv1.RoleBinding, error) {
	b := &rbacv1.RoleBinding{
		ObjectMeta: objectMeta(policy),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: RoleName(policy.Name)},
	}
	for _, sa := range accounts {
		b.Subjects = append(b.Subjects, rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: policy.Namespace})
	}
	if err := controllerutil.SetControllerReference(policy, b, r.Scheme); err != nil {
		return nil, fmt.Errorf("own RoleBinding: %w", err)
	}
	return b, nil
}

func sameMeta(have, want client.Object) bool {
	return equality.Semantic.DeepEqual(have.GetLabels(), want.GetLabels()) &&
		equality.Semantic.DeepEqual(have.GetOwnerReferences(), want.GetOwnerReferences())
}

// ensure creates want, or patches the existing object when update says it
// changed it; an object nobody changed is not written.
func ensure[T client.Object](ctx context.Context, r *Reconciler, want T, update func(T) bool) error {
	have := want.DeepCopyObject().(T)
	err := r.Cache.Get(ctx, client.ObjectKeyFromObject(want), have)
	if apierrors.IsNotFound(err) {
		if err := r.Client.Create(ctx, want); err != nil {
			return fmt.Errorf("create %T %s: %w", want, want.GetName(), err)
		}
		ctrl.LoggerFrom(ctx).Info("Created sidecar access object", "kind", fmt.Sprintf("%T", want), "name", want.GetName())
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %T %s: %w", want, want.GetName(), err)
	}
	patch := client.MergeFrom(have.DeepCopyObject().(T))
	if !update(have) {
		return nil
	}
	if err := r.Client.Patch(ctx, have, patch); err != nil {
		return fmt.Errorf("patch %T %s: %w", want, want.GetName(), err)
	}
	return nil
}

func (r *Reconciler) remove(ctx context.Context, key types.NamespacedName) error {
	name := types.NamespacedName{Namespace: key.Namespace, Name: RoleName(key.Name)}
	for _, o := range []client.Object{&rbacv1.RoleBinding{}, &rbacv1.Role{}} {
		if err := r.Cache.Get(ctx, name, o); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("read %T %s: %w", o, name.Name, err)
		}
		if err := r.Client.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete %T %s: %w", o, name.Name, err)
		}
	}
	return nil
}
