// Command keygate-local runs all of keygate on this machine (make run): a
// real kube-apiserver and etcd with keygate's CRDs, the manager with its
// injection webhook, the samples of the four seed platforms, the demo
// upstream and one sidecar per sample policy; it prints ready-to-paste
// commands for every seed flow and stays up until Ctrl-C (see package local).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keygate-dev/keygate/local"
)

func main() {
	// envtest logs through controller-runtime; the launcher prints its own progress.
	ctrl.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keygate-local:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keygate-local", flag.ContinueOnError)
	binDir := fs.String("bin-dir", "bin", "directory holding manager and sidecar (make build) and, optionally, kubectl-keygate (make plugin)")
	assets := fs.String("assets-dir", "", "directory holding kube-apiserver and etcd (default <bin-dir>/k8s; make envtest)")
	configDir := fs.String("config-dir", "config", "the repository's config/ directory (CRDs, webhook, samples)")
	lockFile := fs.String("lock-file", filepath.Join(os.TempDir(), "keygate-local.lock"), "lock held while running; a second run refuses to start")
	portBase := fs.Int("port-base", 8443, "first sidecar port (one per sample policy, consecutive); 0 picks free ports")
	namespace := fs.String("namespace", "default", "namespace of the samples and the demo pods")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *assets == "" {
		*assets = filepath.Join(*binDir, "k8s")
	}
	abs := func(p *string) error {
		a, err := filepath.Abs(*p)
		*p = a
		return err
	}
	for _, p := range []*string{binDir, assets, configDir, lockFile} {
		if err := abs(p); err != nil {
			return err
		}
	}
	return local.Run(ctx, local.Options{
		ConfigDir:  *configDir,
		ManagerBin: filepath.Join(*binDir, "manager"),
		SidecarBin: filepath.Join(*binDir, "sidecar"),
		PluginBin:  filepath.Join(*binDir, "kubectl-keygate"),
		AssetsDir:  *assets,
		LockFile:   *lockFile,
		PortBase:   *portBase,
		Namespace:  *namespace,
		Out:        os.Stdout,
	})
}
