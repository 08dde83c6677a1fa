package scale

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// writeCostKeys is how many objects each kind of write is measured over.
const writeCostKeys = 4000

// BenchmarkWriteCosts prints the API server's (and etcd's) CPU per request
// for each write a new key needs: the ceiling's two creates (a Secret, an
// ApiKey) and the status write that records the key Ready, as a merge patch
// (what the manager sends), a full update and a server-side apply, and the
// least status write there is (one integer, no precondition); each measured
// over writeCostKeys objects written 16 at a time with a watch of the ApiKeys
// open (the manager's informer). Its last two lines are what creating a key
// and recording it Ready costs the API server, as a multiple of what the
// ceiling's two creates cost, with the least status write and with the
// manager's: the floor of bench-scale's operator/ceiling ratio on a CPU-bound
// API server.
func BenchmarkWriteCosts(b *testing.B) {
	ctrl.SetLogger(logr.Discard())
	scheme, _, env, cfg := startAPIServer(b)
	cfg.QPS, cfg.Burst = -1, 0
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	must(b, err)
	apiServer := kubernetes.NewForConfigOrDie(cfg).Discovery().RESTClient()
	apiURL, err := url.Parse(cfg.Host)
	must(b, err)
	cpu := cpuMeter{"API server": pidWithArg("--secure-port=" + apiURL.Port()), "etcd": pidWithArg(env.ControlPlane.Etcd.URL.String())}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	w, err := c.Watch(ctx, &keygatev1.ApiKeyList{})
	must(b, err)
	defer w.Stop()
	go func() {
		for range w.ResultChan() { //nolint:revive // drained like an informer would
		}
	}()

	// measure runs write for 0..writeCostKeys-1 and returns the API server's
	// CPU milliseconds per write.
	measure := func(what string, write func(ctx context.Context, i int) error) float64 {
		before := cpu.read()
		start := time.Now()
		// BENCH_PROFILE=<dir> saves a CPU profile of the API server over each
		// write's first 5 s (each takes longer).
		profiled := make(chan struct{})
		go func() {
			defer close(profiled)
			if profDir := os.Getenv("BENCH_PROFILE"); profDir != "" {
				raw, err := apiServer.Get().AbsPath("/debug/pprof/profile").Param("seconds", "5").DoRaw(ctx)
				if err == nil {
					err = os.WriteFile(filepath.Join(profDir, "apiserver-cpu-"+strings.Join(strings.Fields(what), "-")+".pprof"), raw, 0o600)
				}
				if err != nil {
					b.Errorf("BENCH_PROFILE: %v", err)
				}
			}
		}()
		defer func() { <-profiled }()
		createAll(ctx, b, writeCostKeys, write)
		took := time.Since(start)
		after := cpu.read()
		api := (after["API server"] - before["API server"]) * 1000 / writeCostKeys
		fmt.Printf("  %-40s %5.2f ms API server, %4.2f ms etcd CPU per request (%d in %v)\n", what, api,
			(after["etcd"]-before["etcd"])*1000/writeCostKeys, writeCostKeys, took.Round(10*time.Millisecond))
		return api
	}
	// ready is a key as the manager records it Ready.
	ready := func(k *keygatev1.ApiKey, i int) {
		now := metav1.Now()
		k.Status.KeyID = fmt.Sprintf("apk-%020d", i)
		k.Status.SecretName = k.Name + "-credentials"
		k.Status.SecretVersion = 1
		k.Status.LastRotationTime = &now
		k.Status.ObservedGeneration = k.Generation
		meta.SetStatusCondition(&k.Status.Conditions, metav1.Condition{Type: keygatev1.ConditionReady, Status: metav1.ConditionTrue,
			Reason: "Ready", Message: "the key is in the bundle", ObservedGeneration: k.Generation})
	}
	// keysIn creates writeCostKeys ApiKeys in a new namespace (not measured)
	// and returns them as read back.
	keysIn := func(ns string) []keygatev1.ApiKey {
		must(b, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
		createAll(ctx, b, writeCostKeys, func(ctx context.Context, i int) error { return c.Create(ctx, newKey(ns, i)) })
		var list keygatev1.ApiKeyList
		must(b, c.List(ctx, &list, client.InNamespace(ns)))
		return list.Items
	}

	for b.Loop() {
		must(b, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "creates"}}))
		secret := measure("create a credentials Secret", func(ctx context.Context, i int) error {
			return c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "creates", Name: fmt.Sprintf("key-%06d-credentials", i),
				Labels: map[string]string{keygatev1.LabelManagedBy: "bench"}},
				StringData: map[string]string{"key": fmt.Sprintf("apk-%020d", i), "secret": strings.Repeat("x", 43)}})
		})
		apiKey := measure("create an ApiKey", func(ctx context.Context, i int) error { return c.Create(ctx, newKey("creates", i)) })
		measure("get an ApiKey (uncached read)", func(ctx context.Context, i int) error {
			return c.Get(ctx, client.ObjectKey{Namespace: "creates", Name: fmt.Sprintf("key-%06d", i)}, &keygatev1.ApiKey{})
		})
		keys := keysIn("patch")
		patch := measure("status: merge patch, resourceVersion (keygate)", func(ctx context.Context, i int) error {
			k := &keys[i]
			before := k.DeepCopy()
			ready(k, i)
			return c.Status().Patch(ctx, k, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
		})
		keys = keysIn("least")
		least := measure("status: merge patch of one integer (the least)", func(ctx context.Context, i int) error {
			return c.Status().Patch(ctx, &keys[i], client.RawPatch(types.MergePatchType, []byte(`{"status":{"observedGeneration":1}}`)))
		})
		keys = keysIn("update")
		measure("status: update", func(ctx context.Context, i int) error {
			ready(&keys[i], i)
			return c.Status().Update(ctx, &keys[i])
		})
		keys = keysIn("apply")
		measure("status: server-side apply", func(ctx context.Context, i int) error {
			k := &keygatev1.ApiKey{TypeMeta: metav1.TypeMeta{APIVersion: keygatev1.GroupVersion.String(), Kind: "ApiKey"},
				ObjectMeta: metav1.ObjectMeta{Namespace: keys[i].Namespace, Name: keys[i].Name}}
			ready(k, i)
			return c.Status().Patch(ctx, k, client.Apply, client.FieldOwner("bench"), client.ForceOwnership) //nolint:staticcheck // the apply patch type, measured as such
		})
		fmt.Printf("  the same with the least status write: %.2f×\n", (secret+apiKey+least)/(secret+apiKey))
		fmt.Printf("  a new key's writes (Secret + ApiKey + status patch) / the ceiling's (Secret + ApiKey): %.2f× the API server's CPU\n",
			(secret+apiKey+patch)/(secret+apiKey))
	}
}
