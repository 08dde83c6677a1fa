package config

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

// namedInformer returns an informer on the one object ns/name of a resource
// ("secrets", "configmaps"): list and watch use a metadata.name field
// selector, so RBAC can grant get/list/watch with resourceNames. Every list
// and watch call reports its outcome to health, which is how an unreachable
// API server is noticed (client-go retries refused watches silently).
func namedInformer(client rest.Interface, resource, ns, name string, obj runtime.Object, health func(error)) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(namedListWatch(client, resource, ns, name, health, nil), obj, 0, cache.Indexers{})
}

// namedListWatch lists and watches the one object ns/name of a resource (see
// namedInformer); the watch reads its events with watchNamed (and in, when
// set, applies them as they are read).
func namedListWatch(client rest.Interface, resource, ns, name string, health func(error), in *applier) *cache.ListWatch {
	sel := fields.OneTermEqualSelector("metadata.name", name)
	lw := cache.NewListWatchFromClient(client, resource, ns, sel)
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			out, err := lw.ListWithContextFunc(ctx, o)
			health(err)
			return out, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel.String()
			out, err := watchNamed(ctx, client, resource, ns, o, in)
			health(err)
			return out, err
		},
	}
}

// Kubernetes watches the bundle Secret and the revocations ConfigMap of one
// policy. If the API server goes away the last good state stays in force
// (fail static) and Store reports the source stale until it returns.
type Kubernetes struct {
	// Client is a core/v1 REST client (NewCoreClient).
	Client    rest.Interface
	Namespace string
	Policy    string
	Store     *Store
	Revoked   *revocation.Set
	Log       *slog.Logger

	mu     sync.Mutex
	health map[string]error
	// broken is the time of each object's last failed list or watch call
	// (keyed as health): the probe reads an object only while it is
	// failing or within catchUpWindow of that time.
	broken map[string]time.Time

	// applyMu orders the bundle applies of the watches and of the probe;
	// appliedRV is the resourceVersion of the bundle Secret last applied.
	applyMu   sync.Mutex
	appliedRV string
	// sharded is the state of a v2 bundle (shards.go); nil for v1.
	sharded *shardedState
	// runCtx is Run's context, under which shard watches run.
	runCtx context.Context
	// shardReads bounds the shard lists and events read and applied at
	// once (shardReadsAtOnce).
	shardReads chan struct{}
}

// report records the outcome of one list or watch call of what and passes
// the combined health to the Store.
func (k *Kubernetes) report(what string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.health == nil {
		k.health, k.broken = map[string]error{}, map[string]time.Time{}
	}
	prev := k.health[what]
	k.health[what] = err
	if err != nil {
		k.broken[what] = time.Now()
	}
	if err != nil && prev == nil {
		k.Log.Warn("Lost contact with the API server; serving the last good state", "object", what, "error", err)
	} else if err == nil && prev != nil {
		k.Log.Info("Regained contact with the API server", "object", what)
	}
	var combined error
	for w, e := range k.health {
		if e != nil {
			combined = fmt.Errorf("%s: %w", w, e)
			break
		}
	}
	k.Store.SetSourceHealth(combined)
}

// Run watches until ctx ends.
func (k *Kubernetes) Run(ctx context.Context) error {
	k.applyMu.Lock()
	k.runCtx = ctx
	k.shardReads = make(chan struct{}, shardReadsAtOnce)
	k.applyMu.Unlock()
	secretName := bundle.SecretName(k.Policy)
	cmName := bundle.RevocationsConfigMapName(k.Policy)
	si := namedInformer(k.Client, "secrets", k.Namespace, secretName, &corev1.Secret{}, func(err error) { k.report("Secret "+secretName, err) })
	ci := namedInformer(k.Client, "configmaps", k.Namespace, cmName, &corev1.ConfigMap{}, func(err error) { k.report("ConfigMap "+cmName, err) })
	onSecret := func(obj any) {
		s, ok := obj.(*corev1.Secret)
		if !ok || s.Name != secretName {
			return
		}
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
		return func(_ context.Context, _ *cache.Reflector, err error) { k.report(what, err) }
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

// applySecret installs the bundle of s unless a newer version of the Secret
// is in force already. The watch and the probe both read the Secret: a probe
// GET answered just before the watch delivered the next version (say, the one
// that drops a disabled key) arrives after it, and installing it would put
// the old bundle back in force until the Secret next changes. Versions are
// ordered by resourceVersion (an integer on every Kubernetes API server,
// resourceversion.CompareResourceVersion); versions that cannot be compared
// are applied in the order they arrive.
func (k *Kubernetes) applySecret(s *corev1.Secret) {
	k.applyMu.Lock()
	defer k.applyMu.Unlock()
	if !newerVersion(s.ResourceVersion, k.appliedRV) {
		return
	}
	data, ok := s.Data[bundle.SecretDataKey]
	if !ok {
		k.Log.Error("Bundle Secret has no bundle; the last good one stays in force", "secret", s.Name, "key", bundle.SecretDataKey)
		return
	}
	b, err := bundle.Parse(data)
	if err != nil {
		k.Store.Reject(err)
		k.Log.Error("Rejected bundle; the last good one stays in force", "secret", s.Name, "error", err)
		return
	}
	k.appliedRV = s.ResourceVersion
	if b.Version == bundle.FormatVersionV2 {
		k.applyIndex(s.Name, b, data)
		return
	}
	k.stopShards()
	rt, err := CompileBundle(b)
	if err != nil {
		k.Store.Reject(err)
		k.Log.Error("Rejected bundle; the last good one stays in force", "secret", s.Name, "error", err)
		return
	}
	sum := sha256.Sum256(data)
	rt.Fingerprint = fmt.Sprintf("%x", sum[:6])
	k.install(s.Name, rt)
}

// install puts rt in force and logs it when it is new.
func (k *Kubernetes) install(source string, rt *Runtime) {
	prev := k.Store.Load()
	if cur := k.Store.Install(rt); cur == prev {
		return
	}
	k.Log.Info("Loaded bundle", "secret", source, "fingerprint", rt.Fingerprint, "keys", rt.KeyCount())
}

// newerVersion reports whether resourceVersion rv is to be applied over cur,
// the one in force ("" for none): when it is greater, or when the two cannot
// be compared and differ.
func newerVersion(rv, cur string) bool {
	if cur == "" {
		return true
	}
	c, err := resourceversion.CompareResourceVersion(rv, cur)
	if err != nil {
		return rv != cur
	}
	return c > 0
}

// probeInterval is how often, while a watch is failing, its object is read
// with a plain GET.
const probeInterval = time.Second

// catchUpWindow is how long after an object's last failed list or watch
// call it is still read with GET: a watch re-established against an API
// server that has just restarted was seen to deliver nothing for about 20 s
// (test/faults: a revocation made right after the return reached the other
// sidecars 20.6 s later), while GETs answer at once.
const catchUpWindow = 30 * time.Second

// probe catches up as soon as the API server is back: client-go backs off a
// refused watch for up to a minute, so while an object's list or watch is
// failing, and for catchUpWindow after its own last failure, the object is
// read with GET every probeInterval and applied. The catch-up is per object:
// the index Secret and the revocations ConfigMap are read together when
// either is due, a shard when its own watch is; one shard watch's hiccup (a
// 410 Gone, a refused call) reads that shard only, not the 64 shards of a
// 100,000-key policy (18 MiB a second). An outage of the API server fails
// every watch, so then every object is read. (Revocations read this way are
// merged with those added locally: Set.Replace keeps entries the read does
// not show yet.)
func (k *Kubernetes) probe(ctx context.Context, secretName, cmName string) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due := k.catchingUp()
		if len(due) == 0 {
			continue
		}
		if due["Secret "+secretName] || due["ConfigMap "+cmName] {
			gctx, cancel := context.WithTimeout(ctx, probeInterval)
			s, cm := &corev1.Secret{}, &corev1.ConfigMap{}
			err := k.Client.Get().Namespace(k.Namespace).Resource("secrets").Name(secretName).Do(gctx).Into(s)
			if err == nil {
				err = k.Client.Get().Namespace(k.Namespace).Resource("configmaps").Name(cmName).Do(gctx).Into(cm)
			}
			cancel()
			if err != nil {
				continue
			}
			k.Revoked.Replace(revocation.Parse(cm.Data))
			k.applySecret(s)
		}
		if k.probeShards(ctx, due) {
			// Every object failing was read (a failing object is always
			// due): the state in force is current.
			k.Store.SetSourceHealth(nil)
		}
	}
}

// catchingUp returns the objects (keyed as health) to read with GET now:
// those whose list or watch is failing or failed within catchUpWindow (nil
// for none).
func (k *Kubernetes) catchingUp() map[string]bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	var due map[string]bool
	for what, err := range k.health {
		if err != nil || time.Since(k.broken[what]) < catchUpWindow {
			if due == nil {
				due = map[string]bool{}
			}
			due[what] = true
		}
	}
	return due
}
