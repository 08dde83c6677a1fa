// Package chart_test renders the Helm chart in charts/keygate with bin/helm
// and checks it against the kustomize install in config/: the same RBAC rules,
// a webhook configuration as safe as docs/injection.md describes, manager
// flags that name the rendered objects, and a schema that refuses unpinned images.
package chart_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

const (
	root      = "../.."
	chartPath = "charts/keygate"
)

// helm runs bin/helm from the repository root and returns stdout, stderr and the error.
func helm(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join(root, "bin", "helm"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s not found (%v): run `hack/tools.sh helm` (or `make test`, which installs it) first", bin, err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	return stdout.String(), stderr.String(), err
}

// rendered is `helm template` output, split into objects by kind and name.
type rendered map[string][]byte

func key(kind, name string) string { return kind + "/" + name }

func render(t *testing.T, namespace string, set ...string) rendered {
	t.Helper()
	args := []string{"template", "t", chartPath, "--namespace", namespace}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, stderr, err := helm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	objs := rendered{}
	for _, doc := range strings.Split(out, "\n---\n") {
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("rendered document does not parse: %v\n%s", err, doc)
		}
		if meta.Kind == "" {
			continue
		}
		k := key(meta.Kind, meta.Metadata.Name)
		if _, dup := objs[k]; dup {
			t.Fatalf("%s rendered twice", k)
		}
		objs[k] = []byte(doc)
	}
	return objs
}

func (r rendered) get(t *testing.T, kind, name string, into any) {
	t.Helper()
	doc, ok := r[key(kind, name)]
	if !ok {
		keys := make([]string, 0, len(r))
		for k := range r {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		t.Fatalf("no %s/%s rendered; have %v", kind, name, keys)
	}
	if err := yaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("%s/%s: %v", kind, name, err)
	}
}

// readRules reads the rules of the ClusterRole in file (relative to the repository root).
func readRules(t *testing.T, file string) []rbacv1.PolicyRule {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var role rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &role); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if role.Kind == "ClusterRole" {
			return role.Rules
		}
	}
	t.Fatalf("%s holds no ClusterRole", file)
	return nil
}

func TestClusterRolesEqualConfig(t *testing.T) {
	objs := render(t, "keygate-system")
	for _, c := range []struct{ name, file string }{
		{"keygate-manager", "config/rbac/role.yaml"},
		{"keygate-injector", "config/webhook/rbac.yaml"},
	} {
		var role rbacv1.ClusterRole
		objs.get(t, "ClusterRole", c.name, &role)
		if want := readRules(t, c.file); !reflect.DeepEqual(role.Rules, want) {
			t.Errorf("ClusterRole %s in the chart differs from %s: copy the rules into charts/keygate/templates again\nchart:  %+v\nconfig: %+v",
				c.name, c.file, role.Rules, want)
		}
		var binding rbacv1.ClusterRoleBinding
		objs.get(t, "ClusterRoleBinding", c.name, &binding)
		if binding.RoleRef.Name != c.name || len(binding.Subjects) != 1 ||
			binding.Subjects[0].Name != "keygate-manager" || binding.Subjects[0].Namespace != "keygate-system" {
			t.Errorf("ClusterRoleBinding %s: roleRef %+v subjects %+v", c.name, binding.RoleRef, binding.Subjects)
		}
	}
	var le rbacv1.Role
	objs.get(t, "Role", "keygate-leader-election", &le)
	if le.Namespace != "keygate-system" {
		t.Errorf("leader election Role in %q, want the release namespace", le.Namespace)
	}
}

func TestWebhookConfiguration(t *testing.T) {
	for _, c := range []struct {
		name, namespace string
		set             []string
		excluded        []string
	}{
		{"defaults", "keygate-system", nil, []string{"kube-system", "kube-public", "keygate-system"}},
		{"other namespace and extras", "security", []string{"webhook.excludeNamespaces={monitoring,istio-system}"},
			[]string{"kube-system", "kube-public", "security", "monitoring", "istio-system"}},
		{"cert-manager", "keygate-system", []string{"webhook.certMode=cert-manager", "webhook.timeoutSeconds=3"},
			[]string{"kube-system", "kube-public", "keygate-system"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			objs := render(t, c.namespace, c.set...)
			certManager := slices.Contains(c.set, "webhook.certMode=cert-manager")
			var cfg admissionregistrationv1.MutatingWebhookConfiguration
			objs.get(t, "MutatingWebhookConfiguration", "keygate-sidecar-injector", &cfg)
			if len(cfg.Webhooks) != 1 {
				t.Fatalf("%d webhooks, want 1", len(cfg.Webhooks))
			}
			w := cfg.Webhooks[0]
			if got := w.ObjectSelector; got == nil || !reflect.DeepEqual(got.MatchLabels, map[string]string{"keygate.dev/inject": "true"}) || len(got.MatchExpressions) != 0 {
				t.Errorf("objectSelector %+v, want exactly keygate.dev/inject=true", got)
			}
			if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Fail {
				t.Errorf("failurePolicy %v, want Fail", w.FailurePolicy)
			}
			wantTimeout := int32(5)
			if certManager {
				wantTimeout = 3
			}
			if w.TimeoutSeconds == nil || *w.TimeoutSeconds != wantTimeout {
				t.Errorf("timeoutSeconds %v, want %d", w.TimeoutSeconds, wantTimeout)
			}
			if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
				t.Errorf("sideEffects %v, want None", w.SideEffects)
			}
			if !reflect.DeepEqual(w.AdmissionReviewVersions, []string{"v1"}) {
				t.Errorf("admissionReviewVersions %v, want [v1]", w.AdmissionReviewVersions)
			}
			if len(w.Rules) != 1 || !reflect.DeepEqual(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
				!reflect.DeepEqual(w.Rules[0].Resources, []string{"pods"}) || !reflect.DeepEqual(w.Rules[0].APIGroups, []string{""}) {
				t.Errorf("rules %+v, want CREATE of core pods only", w.Rules)
			}
			ns := w.NamespaceSelector
			if ns == nil || len(ns.MatchLabels) != 0 || len(ns.MatchExpressions) != 1 {
				t.Fatalf("namespaceSelector %+v, want one NotIn expression", ns)
			}
			if e := ns.MatchExpressions[0]; e.Key != "kubernetes.io/metadata.name" || e.Operator != "NotIn" || !reflect.DeepEqual(e.Values, c.excluded) {
				t.Errorf("namespaceSelector %+v, want kubernetes.io/metadata.name NotIn %v", e, c.excluded)
			}
			svc := w.ClientConfig.Service
			if svc == nil || svc.Name != "keygate-webhook-service" || svc.Namespace != c.namespace || svc.Path == nil || *svc.Path != "/mutate-v1-pod" {
				t.Errorf("clientConfig.service %+v", svc)
			}
			if len(w.ClientConfig.CABundle) != 0 {
				t.Error("caBundle is set in the chart; the manager or cert-manager fills it")
			}
			ann := cfg.Annotations["cert-manager.io/inject-ca-from"]
			var secret corev1.Secret
			_, hasSecret := objs[key("Secret", "keygate-webhook-cert")]
			_, hasCert := objs[key("Certificate", "keygate-webhook-cert")]
			if certManager {
				if want := c.namespace + "/keygate-webhook-cert"; ann != want {
					t.Errorf("cert-manager.io/inject-ca-from %q, want %q", ann, want)
				}
				if hasSecret || !hasCert {
					t.Errorf("cert-manager mode: Secret rendered %v (want false), Certificate %v (want true)", hasSecret, hasCert)
				}
			} else {
				if ann != "" || hasCert {
					t.Errorf("self-signed mode: inject-ca-from %q, Certificate rendered %v", ann, hasCert)
				}
				objs.get(t, "Secret", "keygate-webhook-cert", &secret)
				if secret.Labels["app.kubernetes.io/managed-by"] != "keygate" {
					t.Errorf("webhook cert Secret labels %v: the manager's cache sees only app.kubernetes.io/managed-by=keygate", secret.Labels)
				}
			}
			var service corev1.Service
			objs.get(t, "Service", "keygate-webhook-service", &service)
			var dep appsv1.Deployment
			objs.get(t, "Deployment", "keygate-manager", &dep)
			for k, v := range service.Spec.Selector {
				if dep.Spec.Template.Labels[k] != v {
					t.Errorf("Service selector %v does not select the manager's pods %v", service.Spec.Selector, dep.Spec.Template.Labels)
				}
			}
			args := dep.Spec.Template.Spec.Containers[0].Args
			for _, want := range []string{
				"--webhook-service-namespace=" + c.namespace,
				"--webhook-service-name=" + service.Name,
				"--webhook-config-name=" + cfg.Name,
				"--webhook-cert-secret=keygate-webhook-cert",
			} {
				if !slices.Contains(args, want) {
					t.Errorf("manager args %v lack %s", args, want)
				}
			}
		})
	}
}

func TestDeployment(t *testing.T) {
	objs := render(t, "keygate-system")
	var dep appsv1.Deployment
	objs.get(t, "Deployment", "keygate-manager", &dep)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", dep.Spec.Replicas)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != "keygate/manager:v0.1.0" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s (%s), want keygate/manager:v0.1.0 (IfNotPresent)", c.Image, c.ImagePullPolicy)
	}
	var sidecarImage string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--sidecar-image="); ok {
			sidecarImage = v
		}
	}
	repo, tag, ok := strings.Cut(sidecarImage, ":")
	if !ok || repo != "keygate/sidecar" || tag == "" || tag == "latest" {
		t.Errorf("--sidecar-image=%q, want keygate/sidecar with a pinned tag", sidecarImage)
	}
	for _, want := range []string{"--leader-elect", "--sidecar-cpu-request=50m", "--sidecar-memory-request=64Mi", "--sidecar-memory-limit=128Mi", "--webhook-port=9443", "--webhook-cert-mode=self-signed"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args %v lack %s", c.Args, want)
		}
	}
	var podNS bool
	for _, e := range c.Env {
		podNS = podNS || e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
	}
	if !podNS {
		t.Errorf("env %+v lacks POD_NAMESPACE from metadata.namespace", c.Env)
	}
	var webhookPort bool
	for _, p := range c.Ports {
		webhookPort = webhookPort || p.Name == "webhook" && p.ContainerPort == 9443
	}
	if !webhookPort {
		t.Errorf("ports %+v lack webhook 9443", c.Ports)
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probes: liveness %+v readiness %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("securityContext %+v", sc)
	}
	var tmp bool
	for _, v := range pod.Volumes {
		tmp = tmp || v.Name == "tmp" && v.EmptyDir != nil
	}
	if !tmp || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "tmp" && m.MountPath == "/tmp" }) {
		t.Errorf("no /tmp emptyDir: volumes %+v mounts %+v", pod.Volumes, c.VolumeMounts)
	}

	// Values reach the sidecar flags.
	objs = render(t, "keygate-system", "sidecar.image.tag=v9.9.9", "sidecar.resources.limits.cpu=500m",
		"sidecar.resources.requests.memory=32Mi", "watchNamespaces={a,b}")
	objs.get(t, "Deployment", "keygate-manager", &dep)
	for _, want := range []string{"--sidecar-image=keygate/sidecar:v9.9.9", "--sidecar-cpu-limit=500m", "--sidecar-memory-request=32Mi", "--watch-namespaces=a,b,keygate-system"} {
		if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, want) {
			t.Errorf("args %v lack %s", dep.Spec.Template.Spec.Containers[0].Args, want)
		}
	}
}

func TestSchemaRefuses(t *testing.T) {
	for _, set := range []string{
		"image.tag=latest",
		"sidecar.image.tag=latest",
		"webhook.timeoutSeconds=6",
		"webhook.timeoutSeconds=0",
		"webhook.certMode=manual",
		"sidecar.resources.requests.cpu=lots",
		"unknownValue=1",
	} {
		out, stderr, err := helm(t, "template", "t", chartPath, "--set", set)
		if err == nil {
			t.Errorf("--set %s: rendered, want a schema error\n%.300s", set, out)
		} else if !strings.Contains(stderr, "schema") {
			t.Errorf("--set %s: failed, but not on the schema: %s", set, stderr)
		}
	}
}

// The chart owns the leader-election Lease (empty), named as the manager's
// LeaderElectionID, so that `helm uninstall` deletes it (issue 17: the old
// leader cannot release it once its Role is gone). None without leader election.
func TestLease(t *testing.T) {
	var lease coordinationv1.Lease
	render(t, "platform").get(t, "Lease", "keygate-manager.keygate.dev", &lease)
	if lease.Namespace != "platform" || !reflect.DeepEqual(lease.Spec, coordinationv1.LeaseSpec{}) {
		t.Errorf("Lease %+v: want an empty Lease in the release namespace", lease)
	}
	main, err := os.ReadFile(filepath.Join(root, "cmd", "manager", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`LeaderElectionID:\s*"keygate-manager\.keygate\.dev"`).Match(main) {
		t.Error("cmd/manager's LeaderElectionID is not keygate-manager.keygate.dev: rename the chart's Lease with it")
	}
	if _, ok := render(t, "platform", "leaderElect=false")[key("Lease", "keygate-manager.keygate.dev")]; ok {
		t.Error("a Lease rendered with leaderElect=false")
	}
}
