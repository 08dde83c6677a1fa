// Command manager runs the keygate operator: the ApiKey and TokenPolicy
// reconcilers, the sidecars' RBAC and the sidecar injection webhook.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers"
	"github.com/keygate-dev/keygate/controllers/apicontact"
	"github.com/keygate-dev/keygate/controllers/podinject"
	"github.com/keygate-dev/keygate/internal/mappingmemo"
	"github.com/keygate-dev/keygate/internal/memorylimit"
)

// Client-side rate limit of the manager's API client (see --kube-api-qps).
const (
	DefaultKubeAPIQPS   = 500
	DefaultKubeAPIBurst = 1000
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
	kubeQPS := fs.Float64("kube-api-qps", DefaultKubeAPIQPS, "Client-side limit of requests per second to the API server (its priority and fairness is the real protection); the same whatever the config source.")
	kubeBurst := fs.Int("kube-api-burst", DefaultKubeAPIBurst, "Requests to the API server allowed at once above --kube-api-qps.")
	pprofAddr := fs.String("pprof-bind-address", "0", "Address net/http/pprof is served on (/debug/pprof/; it shows memory contents, bind it to localhost); 0 turns it off.")
	memoryLimit := fs.String("memory-limit", "auto", "Soft memory limit of the Go runtime (GOMEMLIMIT): auto (GOMEMLIMIT if set, else 90% of the container's memory limit, else none), none, or a quantity such as 460Mi. See docs/operator.md, \"Memory\".")
	var ctrlOpts controllers.Options
	fs.IntVar(&ctrlOpts.ApiKeyConcurrency, "apikey-concurrency", controllers.DefaultApiKeyConcurrency, "ApiKeys reconciled at once.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kubeQPS <= 0 || *kubeBurst <= 0 {
		return fmt.Errorf("--kube-api-qps (%v) and --kube-api-burst (%d) must be positive", *kubeQPS, *kubeBurst)
	}
	if ctrlOpts.ApiKeyConcurrency <= 0 {
		return fmt.Errorf("--apikey-concurrency (%d) must be positive", ctrlOpts.ApiKeyConcurrency)
	}
	memLimit, err := memorylimit.Apply(*memoryLimit)
	if err != nil {
		return err
	}
	// The API client's latency and its rate limiter's wait, on /metrics:
	// which of the two sets the pace (docs/operator.md, "At scale").
	crmetrics.RegisterRESTClientMetrics(crmetrics.MetricRequestLatency, crmetrics.MetricRateLimiterLatency)
	logger := controllers.QuietConflicts(controllers.CapVerbosity(zap.New(zap.UseFlagOptions(&zapOpts))))
	ctrl.SetLogger(logger)
	// client-go (leader election among others) logs through klog: the same
	// sink, so its expected conflicts are quiet too and its lines are JSON.
	klog.SetLogger(logger)
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(keygatev1.AddToScheme(scheme))

	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	// Set here, whatever the source: client-go's default for a kubeconfig
	// is 5/s burst 10, while controller-runtime turns the limit off for its
	// own lookups; neither was chosen for keygate (docs/reliability.md).
	cfg.QPS, cfg.Burst = float32(*kubeQPS), *kubeBurst
	// While the API server is unreachable, requests wait for it rather than
	// fail, so client-go's watch back-off cannot grow to a minute and work
	// asked for right after an outage is done within seconds.
	contact, err := apicontact.New(cfg, ctrl.Log.WithName("apiserver"))
	if err != nil {
		return err
	}
	contact.Wrap(cfg)
	watched := splitNamespaces(namespaces)
	opts := ctrl.Options{
		Scheme: scheme,
		// Metrics are served by metricsServer on a listener opened here, so
		// that the bound address (port 0 included) is known and logged.
		Metrics:                 metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "keygate-manager.keygate.dev",
		LeaderElectionNamespace: leaderElectionNamespace,
		// Leaving at once on shutdown lets a new leader start without waiting for the lease to expire.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controllers.CacheOptions(watched),
		PprofBindAddress:              *pprofAddr,
		// The cache asks whether an object is namespaced on every read when
		// it watches a list of namespaces; the answers are kept.
		MapperProvider: func(c *rest.Config, hc *http.Client) (meta.RESTMapper, error) {
			m, err := apiutil.NewDynamicRESTMapper(c, hc)
			if err != nil {
				return nil, err
			}
			return mappingmemo.New(m), nil
		},
	}
	if *enableInjection {
		opts.WebhookServer = inject.WebhookServer()
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	mgr = readyzWaiter{mgr} // the startup probe's /readyz?wait=
	if err := mgr.Add(contact); err != nil {
		return fmt.Errorf("add API server probe: %w", err)
	}
	if err := controllers.SetupWithManager(ctx, mgr, ctrlOpts); err != nil {
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

	if metricsAddr != "0" {
		srv, err := metricsServer(metricsAddr)
		if err != nil {
			return err
		}
		if err := mgr.Add(srv); err != nil {
			return fmt.Errorf("add metrics server: %w", err)
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add healthz check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("add readyz check: %w", err)
	}
	log.Info("Starting manager", "watchNamespaces", namespaces, "leaderElect", leaderElect, "injection", *enableInjection,
		"kubeAPIQPS", cfg.QPS, "kubeAPIBurst", cfg.Burst, "memoryLimit", memorylimit.String(memLimit))
	return start(ctx, mgr)
}

func start(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// metricsServer serves controller-runtime's registry (which holds keygate's
// metrics too) on addr. The listener is opened now, so a port taken by
// someone else fails the start, and the server logs the address it bound
// ("starting server", name "metrics", addr).
func metricsServer(addr string) (*manager.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(crmetrics.Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	timeout := 30 * time.Second
	return &manager.Server{Name: "metrics", Listener: ln, ShutdownTimeout: &timeout,
		Server: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
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
