// Command sidecar is keygate's validating reverse proxy and token endpoint.
// It runs beside a workload (injected by the keygate webhook) and enforces one
// TokenPolicy, read from the policy's bundle Secret or from a file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/internal/memorylimit"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/gctarget"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/server"
	"github.com/keygate-dev/keygate/sidecar/servingcert"
	"github.com/keygate-dev/keygate/sidecar/usage"
)

const usageText = `keygate sidecar: authenticates and authorises every request to the workload
beside it (HTTP Basic, bearer JWTs, API-key header; CIDRs; per-route
permissions), serves the token endpoint, and proxies allowed requests to
127.0.0.1:<upstream-port>.

Kubernetes mode (default): watches the Secret keygate-<policy> and the
ConfigMap keygate-<policy>-revocations in --namespace, and merge-patches
the minute each key ID last authenticated into keygate-<policy>-usage, at
most once a minute.
File mode: --bundle-file (and --revocations-file), reloaded on change.

Admin port: /healthz, /readyz, /metrics (and /debug/pprof/ with --enable-pprof).

Flags:
`

// Client-side rate limit of the sidecar's API client (see --kube-api-qps;
// chosen by BenchmarkRevocationBurst, docs/reliability.md).
const (
	DefaultKubeAPIQPS   = 50
	DefaultKubeAPIBurst = 100
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], nil); err != nil {
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		stop()
		os.Exit(1)
	}
}

// run runs the sidecar until ctx ends, then drains. listening, when not nil,
// is told the bound addresses (tests start the sidecar on port 0; a process
// reports them in its "Started sidecar" log line).
func run(ctx context.Context, args []string, listening func(main, admin net.Addr)) error {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.Usage = func() {
		// Best effort, like flag.PrintDefaults: there is nowhere else to report a failed write of the usage text.
		_, _ = fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	policy := fs.String("policy", "", "name of the TokenPolicy to enforce (Kubernetes mode)")
	namespace := fs.String("namespace", os.Getenv("POD_NAMESPACE"), "namespace of the policy (default $POD_NAMESPACE)")
	upstreamPort := fs.Int("upstream-port", 0, "port of the workload on 127.0.0.1 (required)")
	port := fs.Int("port", 8443, "port of the main listener")
	adminPort := fs.Int("admin-port", 9901, "port of /healthz, /readyz and /metrics")
	bind := fs.String("bind-address", "0.0.0.0", "address the listeners bind to")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster, else $KUBECONFIG)")
	bundleFile := fs.String("bundle-file", "", "read the bundle from this file instead of Kubernetes")
	revFile := fs.String("revocations-file", "", "revocations JSON file (file mode)")
	drain := fs.Duration("drain-timeout", 20*time.Second, "how long in-flight requests may finish after SIGTERM")
	readTimeout := fs.Duration("read-timeout", server.DefaultTimeouts.Read, "main listener read timeout")
	writeTimeout := fs.Duration("write-timeout", server.DefaultTimeouts.Write, "main listener write timeout")
	failureLimit := fs.Int("failure-limit", 20, "failed authentications per minute per key ID and per address before 429")
	keyMetrics := fs.Int("ratelimit-key-metrics", 0, "label keygate_sidecar_ratelimited_by_key_total with up to this many key IDs (0: off)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	enablePprof := fs.Bool("enable-pprof", false, "serve net/http/pprof under /debug/pprof/ on the admin port")
	kubeQPS := fs.Float64("kube-api-qps", DefaultKubeAPIQPS, "client-side limit of requests per second to the API server (Kubernetes mode; revocations waiting together share one request)")
	upstreamProto := fs.String("upstream-protocol", "http1", "protocol to the workload: http1, or h2c (HTTP/2 cleartext with prior knowledge, for gRPC servers)")
	fastPath := fs.Bool("fast-path", true, "serve plain HTTP/1.1 requests on the plain main listener with the lean fast path (anything else goes to net/http); false: net/http for everything")
	h2c := fs.Bool("h2c", false, "also serve HTTP/2 cleartext with prior knowledge on the plain main listener (gRPC clients without TLS); Upgrade: h2c stays refused")
	tlsCert := fs.String("tls-cert-file", "", "serve TLS on the main port with this PEM certificate (chain), reloaded on change; needs --tls-key-file")
	tlsKey := fs.String("tls-key-file", "", "PEM private key of --tls-cert-file")
	tlsClientCA := fs.String("tls-client-ca-file", "", "require client certificates signed by these PEM CAs on the TLS listener, reloaded on change; the verified subject goes to the workload in "+server.HeaderClientCertSubject+" (needs --tls-cert-file)")
	kubeBurst := fs.Int("kube-api-burst", DefaultKubeAPIBurst, "requests to the API server allowed at once above --kube-api-qps")
	gogc := fs.String("gogc", defaultGOGC(), "garbage collector target percentage (GOGC): the heap may grow this much over what is live before a collection; auto (4 MiB over what is live, between 25 and 100, set again whenever a bundle is put in force), an integer, or off; the default is $GOGC when set, else auto (docs/sidecar.md)")
	memoryLimit := fs.String("memory-limit", "auto", "soft memory limit of the Go runtime (GOMEMLIMIT): auto (GOMEMLIMIT if set, else 90% of the container's memory limit, else none), none, or a quantity such as 48Mi (docs/sidecar.md)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	var problems []error
	if *upstreamPort <= 0 || *upstreamPort > 65535 {
		problems = append(problems, errors.New("--upstream-port is required (1-65535)"))
	}
	if *bundleFile == "" && (*policy == "" || *namespace == "") {
		problems = append(problems, errors.New("--policy and --namespace (or $POD_NAMESPACE) are required without --bundle-file"))
	}
	if *kubeQPS <= 0 || *kubeBurst <= 0 {
		problems = append(problems, fmt.Errorf("--kube-api-qps (%v) and --kube-api-burst (%d) must be positive", *kubeQPS, *kubeBurst))
	}
	if *h2c && *tlsCert != "" {
		problems = append(problems, errors.New("--h2c is for the plain listener: with --tls-cert-file HTTP/2 is negotiated by ALPN"))
	}
	if *upstreamProto != "http1" && *upstreamProto != "h2c" {
		problems = append(problems, fmt.Errorf("--upstream-protocol %q: use http1 or h2c", *upstreamProto))
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		problems = append(problems, errors.New("--tls-cert-file and --tls-key-file go together"))
	}
	if *tlsClientCA != "" && *tlsCert == "" {
		problems = append(problems, errors.New("--tls-client-ca-file needs --tls-cert-file: client certificates are verified by the TLS listener"))
	}
	if *revFile != "" && *bundleFile == "" {
		problems = append(problems, errors.New("--revocations-file needs --bundle-file"))
	}
	if err := errors.Join(problems...); err != nil {
		return err
	}
	memLimit, err := memorylimit.Apply(*memoryLimit)
	if err != nil {
		return err
	}
	gcPercent, err := setGOGC(*gogc)
	if err != nil {
		return err
	}

	srcCtx, stopSources := context.WithCancel(context.Background())
	defer stopSources()

	store := &config.Store{}
	if *gogc == "auto" {
		store.OnChange(func(*config.Runtime) { gctarget.Auto() })
	}
	revoked := revocation.NewSet()
	var revStore revocation.Store
	var recorder *usage.Recorder // Kubernetes mode only: usage goes to the policy's usage ConfigMap
	var usageDone chan struct{}  // closed once the usage publisher has made its last write
	if *bundleFile != "" {
		go config.WatchBundleFile(srcCtx, *bundleFile, store, log)
		if *revFile != "" {
			go revocation.WatchFile(srcCtx, *revFile, revoked, config.PollInterval, func(err error) {
				if err != nil {
					log.Error("Failed to read the revocations file", "file", *revFile, "error", err)
				}
			})
			revStore = &revocation.File{Path: *revFile, Set: revoked}
		} else {
			log.Warn("No --revocations-file: revocations are kept in memory only")
			revStore = revocation.Memory{Set: revoked}
		}
	} else {
		cfg, err := restConfig(*kubeconfig)
		if err != nil {
			return err
		}
		cfg.UserAgent = "keygate-sidecar"
		// The same limits whether the config came from --kubeconfig or the
		// pod's service account (client-go's default would be 5/s, burst 10).
		cfg.QPS, cfg.Burst = float32(*kubeQPS), *kubeBurst
		client, err := config.NewCoreClient(cfg)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		kube := &config.Kubernetes{Client: client, Namespace: *namespace, Policy: *policy, Store: store, Revoked: revoked, Log: log}
		recorder = usage.NewRecorder()
		store.OnChange(func(rt *config.Runtime) {
			recorder.Forget(func(keyID string) bool { return rt.Key(keyID) != nil })
		})
		pub := &usage.Publisher{Recorder: recorder, Sink: &usage.ConfigMap{Client: client, Namespace: *namespace, Name: bundle.UsageConfigMapName(*policy)},
			OnError: func(err error) { log.Warn("Failed to publish key usage; retrying in a minute", "error", err) }}
		usageDone = make(chan struct{})
		go func() { pub.Run(srcCtx); close(usageDone) }()
		go func() {
			if err := kube.Run(srcCtx); err != nil && srcCtx.Err() == nil {
				log.Error("Kubernetes source stopped", "error", err)
			}
		}()
		revStore = &revocation.ConfigMap{Client: client, Namespace: *namespace, Name: bundle.RevocationsConfigMapName(*policy), Set: revoked}
	}

	metrics := server.NewMetrics(store)
	metrics.EnableKeyLabels(*keyMetrics)
	var certs *servingcert.Source
	var tlsStatus func() error
	if *tlsCert != "" {
		var err error
		if certs, err = servingcert.New(*tlsCert, *tlsKey, servingcert.DefaultInterval); err != nil {
			return err
		}
		go func() {
			if err := certs.Start(srcCtx); err != nil {
				log.Error("Stopped watching the TLS key pair", "error", err)
			}
		}()
		metrics.Registry.MustRegister(certs.Collector())
		tlsStatus = certs.Err
	}
	var clientCAs *servingcert.ClientCAs
	var clientCAStatus func() error
	if *tlsClientCA != "" {
		var err error
		if clientCAs, err = servingcert.NewClientCAs(*tlsClientCA, servingcert.DefaultInterval); err != nil {
			return err
		}
		go func() { _ = clientCAs.Start(srcCtx) }()
		metrics.Registry.MustRegister(clientCAs.Collector())
		clientCAStatus = clientCAs.Err
	}
	upstream := &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(*upstreamPort))}
	srv := server.New(server.Options{Store: store, Revoked: revoked, Revocations: revStore, Upstream: upstream,
		Log: log, Metrics: metrics, FailureLimit: *failureLimit, Usage: recorder, TLSStatus: tlsStatus,
		ClientCAStatus: clientCAStatus,
		UpstreamH2C:    *upstreamProto == "h2c"})
	t := server.DefaultTimeouts
	t.Read, t.Write = *readTimeout, *writeTimeout
	main := server.NewHTTPServer(srv.Handler(), t)
	var adminOpts []server.AdminOption
	if *enablePprof {
		adminOpts = append(adminOpts, server.WithPprof())
	}
	admin := server.NewHTTPServer(server.AdminHandler(srv, store, metrics, adminOpts...), server.DefaultTimeouts)

	mainLn, err := net.Listen("tcp", net.JoinHostPort(*bind, strconv.Itoa(*port)))
	if err != nil {
		return err
	}
	adminLn, err := net.Listen("tcp", net.JoinHostPort(*bind, strconv.Itoa(*adminPort)))
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	shutdownMain := main.Shutdown
	if certs != nil {
		// ServeTLS adds HTTP/2 (ALPN h2) to the same handler and chain.
		main.TLSConfig = certs.TLSConfig()
		if clientCAs != nil {
			clientCAs.Require(main.TLSConfig)
		}
		go func() { errc <- main.ServeTLS(mainLn, "", "") }()
	} else {
		if *h2c {
			main.Protocols = &http.Protocols{}
			main.Protocols.SetHTTP1(true)
			main.Protocols.SetUnencryptedHTTP2(true)
		}
		if *fastPath {
			fast := srv.NewFastServer(main, t)
			shutdownMain = fast.Shutdown
			go func() { errc <- fast.Serve(mainLn) }()
		} else {
			go func() { errc <- main.Serve(mainLn) }()
		}
	}
	go func() { errc <- admin.Serve(adminLn) }()
	if listening != nil {
		listening(mainLn.Addr(), adminLn.Addr())
	}
	log.Info("Started sidecar", "listen", mainLn.Addr().String(), "tls", certs != nil, "clientCerts", clientCAs != nil, "admin", adminLn.Addr().String(), "upstream", upstream.Host, "policy", *policy, "bundleFile", *bundleFile, "memoryLimit", memorylimit.String(memLimit), "gogc", gcPercent)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("Draining", "timeout", *drain)
	srv.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	err = shutdownMain(sctx)
	_ = admin.Close()
	stopSources()
	if usageDone != nil {
		<-usageDone // the final usage write is bounded (2s)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("drain: %w", err)
	}
	log.Info("Stopped sidecar")
	return nil
}

// defaultGOGC is --gogc's default: $GOGC when set, else auto.
func defaultGOGC() string {
	if v := os.Getenv("GOGC"); v != "" {
		return v
	}
	return "auto"
}

// setGOGC sets the collector's target percentage from --gogc (auto, an
// integer of at least 1, or off) and returns it as the log shows it. auto
// (sidecar/gctarget) is set again whenever a bundle is put in force.
func setGOGC(value string) (string, error) {
	switch value {
	case "auto":
		debug.SetGCPercent(gctarget.Max) // until the first bundle
		return value, nil
	case "off":
		debug.SetGCPercent(-1)
		return value, nil
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < 1 {
		return "", fmt.Errorf("--gogc %q: want auto, a percentage of at least 1, or off", value)
	}
	debug.SetGCPercent(n)
	return value, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if cfg, err := rest.InClusterConfig(); err == nil {
		return cfg, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("no in-cluster config and no usable kubeconfig: %w", err)
	}
	return cfg, nil
}
