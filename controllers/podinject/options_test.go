package podinject

import (
	"flag"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	ctrl "sigs.k8s.io/controller-runtime"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

func TestOptionsDefaults(t *testing.T) {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	opts := &Options{}
	opts.BindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := opts.config()
	if err != nil {
		t.Fatalf("defaults are invalid: %v", err)
	}
	want := Config{Image: "keygate/sidecar:v0.1.0", Version: "v0.1.0", Resources: testConfig().Resources}
	if !equality.Semantic.DeepEqual(cfg, want) {
		t.Errorf("config = %#v, want %#v", cfg, want)
	}
	if opts.CertMode != "self-signed" || opts.WebhookConfigName != "keygate-sidecar-injector" || opts.Port != 9443 {
		t.Errorf("unexpected defaults: %+v", opts)
	}
}

func TestOptionsFlags(t *testing.T) {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	opts := &Options{}
	opts.BindFlags(fs)
	err := fs.Parse([]string{"--sidecar-image=registry.example/keygate/sidecar@sha256:abc", "--sidecar-cpu-limit=500m", "--webhook-service-namespace=security"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := opts.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Image != "registry.example/keygate/sidecar@sha256:abc" || !cfg.Resources.Limits[corev1.ResourceCPU].Equal(resource.MustParse("500m")) {
		t.Errorf("config = %#v", cfg)
	}
	if !opts.excludedNamespaces()["security"] || !opts.excludedNamespaces()["kube-system"] || !opts.excludedNamespaces()["kube-public"] {
		t.Errorf("excluded namespaces = %v", opts.excludedNamespaces())
	}
}

func TestSetupNeedsTheWebhookServer(t *testing.T) {
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	err = Setup(mgr, &Options{})
	if err == nil || !strings.Contains(err.Error(), "WebhookServer: opts.WebhookServer()") {
		t.Errorf("Setup = %v, want the WebhookServer error", err)
	}
}

func TestOptionsRefuseBadValues(t *testing.T) {
	opts := &Options{Image: "keygate/sidecar:latest", Version: "v1", CPURequest: "2", CPULimit: "1", MemoryLimit: "lots"}
	_, err := opts.config()
	if err == nil {
		t.Fatal("config accepted bad options")
	}
	for _, want := range []string{`--sidecar-image "keygate/sidecar:latest"`, `--sidecar-memory-limit "lots"`, "sidecar cpu request 2 exceeds its limit 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %q", err, want)
		}
	}
	if _, err := (&Options{Image: "keygate/sidecar", Version: "v1"}).config(); err == nil {
		t.Error("config accepted an image without a tag")
	}
}
