package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// ensureUsage creates the policy's usage ConfigMap, into which the sidecars
// merge-patch the minute each key ID last authenticated (their Role may
// patch it, not create it). Its data belongs to the sidecars: the operator
// only reads it (ApiKeyReconciler.checkUsage).
func (r *TokenPolicyReconciler) ensureUsage(ctx context.Context, pass *policyPass) (ctrl.Result, error) {
	p := pass.policy
	name := bundle.UsageConfigMapName(p.Name)
	cm := &corev1.ConfigMap{}
	found, err := r.getOwned(ctx, p, cm, name)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("usage ConfigMap: %w", err)
	}
	if found {
		return ctrl.Result{}, nil
	}
	cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: name}}
	if err := r.ownedObject(p, cm); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Create(ctx, cm, fieldOwner); err != nil {
		return ctrl.Result{}, fmt.Errorf("create usage ConfigMap %q: %w", name, err)
	}
	return ctrl.Result{}, nil
}

// isUsageConfigMap reports whether o is a usage ConfigMap (its updates are
// the sidecars' reports and concern the ApiKeys, not the policy's bundle).
func isUsageConfigMap(o metav1.Object) bool {
	p, ok := o.GetLabels()[keygatev1.LabelTokenPolicy]
	return ok && o.GetName() == bundle.UsageConfigMapName(p)
}
