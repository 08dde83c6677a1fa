// Command manager runs the keygate operator: the ApiKey and TokenPolicy
// reconcilers, the sidecars' RBAC and the sidecar injection webhook.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers"
	"github.com/keygate-dev/keygate/controllers/podinject"
)

func main() {
	if err := run(ctrl.SetupSignalHandler(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keygate manager:", err)
		os.Exit(1)
	}
}

// run parses the flags in args, builds the manager and runs it until ctx ends.
func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("manager", flag.ExitOnError)
	var (
		metricsAddr, probeAddr, namespaces string
		leaderElect                        bool
		leaderElectionNamespace            string
	)
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address the metrics endpoint binds to; 0 turns it off.")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints bind to.")
	fs.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader so that only one replica reconciles at a time.")
	fs.StringVar(&leaderElectionNamespace, "leader-election-namespace", "", "Namespace of the leader election Lease (default: the manager's own).")
	fs.StringVar(&namespaces, "watch-namespaces", "", "Comma-separated namespaces to watch; empty watches all.")
	fs.StringVar(&namespaces, "namespace", "", "Alias of --watch-namespaces.")
	var inject podinject.Options
	inject.BindFlags(fs)
	enableInjection := fs.Bool("enable-injection", true, "Serve the sidecar injection webhook and keep the sidecars' RBAC; false runs only the ApiKey and TokenPolicy reconcilers (handy outside a cluster).")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	kubeconfig := fs.String("kubeconfig", "", "Path to a kubeconfig; empty uses $KUBECONFIG, the in-cluster config or ~/.kube/config.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctrl.SetLogger(controllers.CapVerbosity(zap.New(zap.UseFlagOptions(&zapOpts))))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(keygatev1.AddToScheme(scheme))

	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	watched := splitNamespaces(namespaces)
	opts := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "keygate-manager.keygate.dev",
		LeaderElectionNamespace: leaderElectionNamespace,
		// Leaving at once on shutdown lets a new leader start without waiting for the lease to expire.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controllers.CacheOptions(watched),
	}
	if *enableInjection {
		opts.WebhookServer = inject.WebhookServer()
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := controllers.SetupWithManager(ctx, mgr, controllers.Options{}); err != nil {
		return err
	}
	if err := controllers.RegisterMetrics(mgr.GetCache()); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}

	if *enableInjection {
		inject.Namespaces = watched
		if err := podinject.Setup(mgr, &inject); err != nil {
			return fmt.Errorf("set up sidecar injection: %w", err)
		}
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add healthz check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("add readyz check: %w", err)
	}
	log.Info("Starting manager", "watchNamespaces", namespaces, "leaderElect", leaderElect, "injection", *enableInjection)
	return start(ctx, mgr)
}

func start(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// restConfig loads the kubeconfig named by --kubeconfig, else the usual places.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return ctrl.GetConfig()
}

func splitNamespaces(s string) []string {
	var out []string
	for _, ns := range strings.Split(s, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			out = append(out, ns)
		}
	}
	return out
}
