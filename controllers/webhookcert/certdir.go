package webhookcert

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// certDirWriter copies the serving key pair from the certificate Secret into
// the webhook server's cert directory whenever it changes. Every replica runs
// it (it needs no leader): each serves with its own files.
type certDirWriter struct {
	reader client.Reader
	secret client.ObjectKey
	dir    string
	holder *Holder
}

// alwaysRunning starts a cache on every replica, leader or not.
type alwaysRunning struct{ cache.Cache }

func (alwaysRunning) NeedLeaderElection() bool { return false }

func addCertDirWriter(mgr ctrl.Manager, opts Options) error {
	if err := os.MkdirAll(opts.CertDir, 0o700); err != nil {
		return fmt.Errorf("create cert directory: %w", err)
	}
	// A cache that sees only the one Secret.
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme: mgr.GetScheme(),
		Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {
				Namespaces: map[string]cache.Config{opts.Secret.Namespace: {}},
				Field:      fields.OneTermEqualSelector("metadata.name", opts.Secret.Name),
			},
		},
	})
	if err != nil {
		return fmt.Errorf("create certificate Secret cache: %w", err)
	}
	if err := mgr.Add(alwaysRunning{c}); err != nil {
		return fmt.Errorf("add certificate Secret cache: %w", err)
	}
	w := &certDirWriter{reader: c, secret: opts.Secret, dir: opts.CertDir, holder: opts.Holder}
	noLeader := false
	return ctrl.NewControllerManagedBy(mgr).
		Named("keygate-webhookcert-writer").
		WatchesRawSource(source.Kind(c, &corev1.Secret{}, &handler.TypedEnqueueRequestForObject[*corev1.Secret]{})).
		WithOptions(controller.Options{NeedLeaderElection: &noLeader, MaxConcurrentReconciles: 1}).
		Complete(w)
}

func (w *certDirWriter) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	if req.NamespacedName != w.secret {
		return reconcile.Result{}, nil
	}
	s := &corev1.Secret{}
	if err := w.reader.Get(ctx, w.secret, s); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	cert, key := s.Data[CertFile], s.Data[KeyFile]
	if len(cert) == 0 || len(key) == 0 {
		return reconcile.Result{}, nil // the rotator has not filled it yet
	}
	if w.holder != nil {
		if err := w.holder.Set(cert, key); err != nil {
			return reconcile.Result{}, fmt.Errorf("load webhook key pair: %w", err)
		}
	}
	certPath, keyPath := filepath.Join(w.dir, CertFile), filepath.Join(w.dir, KeyFile)
	if same(certPath, cert) && same(keyPath, key) {
		return reconcile.Result{}, nil
	}
	// Key first: the watcher keeps the old pair until the two files match again.
	if err := writeFileAtomic(keyPath, key); err != nil {
		return reconcile.Result{}, fmt.Errorf("write webhook key: %w", err)
	}
	if err := writeFileAtomic(certPath, cert); err != nil {
		return reconcile.Result{}, fmt.Errorf("write webhook certificate: %w", err)
	}
	ctrl.LoggerFrom(ctx).Info("Wrote webhook serving certificate", "dir", w.dir)
	return reconcile.Result{}, nil
}

func same(path string, data []byte) bool {
	old, err := os.ReadFile(path) //nolint:gosec // our own cert directory
	return err == nil && bytes.Equal(old, data)
}
