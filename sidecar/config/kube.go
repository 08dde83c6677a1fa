package config

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

// probeInterval is how often a stale source is probed with a plain GET.
const probeInterval = 2 * time.Second

// namedInformer returns an informer on the one object ns/name of a resource
// ("secrets", "configmaps"): list and watch use a metadata.name field
// selector, so RBAC can grant get/list/watch with resourceNames.
func namedInformer(client kubernetes.Interface, resource, ns, name string, obj runtime.Object) cache.SharedIndexInformer {
	lw := cache.NewListWatchFromClient(client.CoreV1().RESTClient(), resource, ns, fields.OneTermEqualSelector("metadata.name", name))
	return cache.NewSharedIndexInformer(lw, obj, 0, cache.Indexers{})
}

// Kubernetes watches the bundle Secret and the revocations ConfigMap of one
// policy. If the API server goes away the last good state stays in force
// (fail static) and Store reports the source stale until it returns.
type Kubernetes struct {
	Client    kubernetes.Interface
	Namespace string
	Policy    string
	Store     *Store
	Revoked   *revocation.Set
	Log       *slog.Logger
}

// Run watches until ctx ends.
func (k *Kubernetes) Run(ctx context.Context) error {
	secretName := bundle.SecretName(k.Policy)
	cmName := bundle.RevocationsConfigMapName(k.Policy)
	si := namedInformer(k.Client, "secrets", k.Namespace, secretName, &corev1.Secret{})
	ci := namedInformer(k.Client, "configmaps", k.Namespace, cmName, &corev1.ConfigMap{})
	onSecret := func(obj any) {
		s, ok := obj.(*corev1.Secret)
		if !ok || s.Name != secretName {
			return
		}
		k.Store.SetSourceHealth(nil)
		k.applySecret(s)
	}
	onCM := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok || cm.Name != cmName {
			return
		}
		k.Revoked.Replace(revocation.Parse(cm.Data))
	}
	if _, err := si.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onSecret,
		UpdateFunc: func(_, obj any) { onSecret(obj) },
		DeleteFunc: func(any) {
			k.Log.Error("Bundle Secret was deleted; the last good bundle stays in force", "secret", secretName)
		},
	}); err != nil {
		return err
	}
	if _, err := ci.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onCM,
		UpdateFunc: func(_, obj any) { onCM(obj) },
	}); err != nil {
		return err
	}
	watchErr := func(what string) cache.WatchErrorHandlerWithContext {
		return func(_ context.Context, _ *cache.Reflector, err error) {
			k.Store.SetSourceHealth(fmt.Errorf("watch %s: %w", what, err))
			k.Log.Warn("Lost the watch; serving the last good state", "object", what, "error", err)
		}
	}
	_ = si.SetWatchErrorHandlerWithContext(watchErr("Secret " + secretName))
	_ = ci.SetWatchErrorHandlerWithContext(watchErr("ConfigMap " + cmName))
	// Revocations first: a restarted sidecar must not accept a revoked token
	// in the moment between loading the bundle and listing the ConfigMap.
	go ci.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), ci.HasSynced) {
		return ctx.Err()
	}
	go si.RunWithContext(ctx)
	go k.probe(ctx, secretName, cmName)
	<-ctx.Done()
	return nil
}

func (k *Kubernetes) applySecret(s *corev1.Secret) {
	data, ok := s.Data[bundle.SecretDataKey]
	if !ok {
		k.Log.Error("Bundle Secret has no bundle; the last good one stays in force", "secret", s.Name, "key", bundle.SecretDataKey)
		return
	}
	rt, err := k.Store.Update(data)
	if err != nil {
		k.Log.Error("Rejected bundle; the last good one stays in force", "secret", s.Name, "error", err)
		return
	}
	k.Log.Info("Loaded bundle", "secret", s.Name, "fingerprint", rt.Fingerprint, "keys", len(rt.Keys))
}

// probe catches up after an outage even when the watch resumes silently.
func (k *Kubernetes) probe(ctx context.Context, secretName, cmName string) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if k.Store.Status().Stale == nil && k.Store.Load() != nil {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, probeInterval)
		s, err := k.Client.CoreV1().Secrets(k.Namespace).Get(gctx, secretName, metav1.GetOptions{})
		if err == nil {
			var cm *corev1.ConfigMap
			cm, err = k.Client.CoreV1().ConfigMaps(k.Namespace).Get(gctx, cmName, metav1.GetOptions{})
			if err == nil {
				k.Revoked.Replace(revocation.Parse(cm.Data))
				k.applySecret(s)
			}
		}
		cancel()
		if err == nil {
			k.Store.SetSourceHealth(nil)
		}
	}
}
