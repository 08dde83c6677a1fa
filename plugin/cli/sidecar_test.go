package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/server"
)

// sidecar is an in-process sidecar in Kubernetes mode: it watches the
// policy's bundle Secret and revocations ConfigMap on the suite's API server.
type sidecar struct {
	url  string
	addr string
}

func startSidecar(t *testing.T, ns, policy string) *sidecar {
	t.Helper()
	core, err := config.NewCoreClient(suite.cfg)
	if err != nil {
		t.Fatal(err)
	}
	store, revoked := &config.Store{}, revocation.NewSet()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	src := &config.Kubernetes{Client: core, Namespace: ns, Policy: policy, Store: store, Revoked: revoked, Log: quietLog}
	go func() { _ = src.Run(ctx) }()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("upstream saw " + r.Header.Get(server.HeaderKeyID)))
	}))
	t.Cleanup(upstream.Close)
	u, _ := url.Parse(upstream.URL)
	srv := server.New(server.Options{Store: store, Revoked: revoked, Upstream: u, Log: quietLog,
		Revocations: &revocation.ConfigMap{Client: core, Namespace: ns, Name: bundle.RevocationsConfigMapName(policy), Set: revoked}})
	front := httptest.NewServer(srv.Handler())
	t.Cleanup(front.Close)
	waitFor(t, propagationTimeout, "sidecar bundle", func() bool { return store.Load() != nil })
	return &sidecar{url: front.URL, addr: front.Listener.Addr().String()}
}

func (s *sidecar) status(t *testing.T, path, authorization string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.url+path, nil)
	req.Header.Set("Authorization", authorization)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// createSidecarPod registers an injected pod of policy at podIP; ready sets
// its status as a kubelet would for a running pod whose sidecar is ready.
func createSidecarPod(t *testing.T, ns, name, policy, podIP string, ready bool) {
	t.Helper()
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{keygatev1.LabelInject: "true"},
			Annotations: map[string]string{keygatev1.AnnotationPolicy: policy, keygatev1.AnnotationUpstreamPort: "8080"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "keygate-sidecar", Image: "keygate/sidecar:v0.1.0", RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app", Image: "app:v1"}},
		},
	}
	ctx := context.Background()
	if err := suite.k8s.Create(ctx, pod); err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podIP, PodIPs: []corev1.PodIP{{IP: podIP}},
		Conditions:            []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}},
		InitContainerStatuses: []corev1.ContainerStatus{{Name: "keygate-sidecar", Ready: ready, Image: "keygate/sidecar:v0.1.0", ImageID: "x"}},
	}
	if err := suite.k8s.Status().Update(ctx, pod); err != nil {
		t.Fatalf("pod %s status: %v", name, err)
	}
}

// TestTokenRevokeCanI runs the commands that talk to sidecars. The token
// goes through the API server's pods/proxy subresource for real: the pod's
// address (192.0.2.10, TEST-NET-1) is reached through the API server's
// egress CONNECT proxy, which maps it to the sidecar's loopback listener.
func TestTokenRevokeCanI(t *testing.T) {
	ns := createNamespace(t, "tokens")
	createPolicy(t, ns, "payments", keygatev1.TokenPolicySpec{
		Authentication: keygatev1.Authentication{APIKeyHeader: "X-Payments-Key"},
		Rules: []keygatev1.Rule{
			{Methods: []string{"GET"}, Paths: []keygatev1.URLPath{"/charges", "/charges/*"}, Permission: "charges:List"},
			{Methods: []string{"POST"}, Paths: []keygatev1.URLPath{"/charges"}, Permission: "charges:Create"},
		},
		DefaultAction: keygatev1.ActionDeny,
	})
	spec := keySpec("payments", "charges:List")
	spec.Clients = []keygatev1.ApiKeyClient{{Key: "acme", Permissions: []keygatev1.Permission{"charges:List"}}}
	createKey(t, ns, "shop", spec)
	fenced := keySpec("payments", "charges:List")
	fenced.AllowedCIDRs = []keygatev1.CIDR{"185.184.111.0/24"}
	key := createKey(t, ns, "fenced", fenced)
	createPolicy(t, ns, "idle", keygatev1.TokenPolicySpec{})
	createKey(t, ns, "idle-key", keySpec("idle"))

	// No pod at all, then a pod that is not ready: token says so.
	wantCode(t, kg(t, "token", "idle-key", "-n", ns), ExitError, fmt.Sprintf(`no sidecar pod of TokenPolicy "idle" in namespace %q`, ns))
	createSidecarPod(t, ns, "idle-0", "idle", "192.0.2.20", false)
	wantCode(t, kg(t, "token", "idle-key", "-n", ns), ExitError,
		fmt.Sprintf(`no ready sidecar pod of TokenPolicy "idle" in namespace %q (1 pod(s), none ready)`, ns))

	sc := startSidecar(t, ns, "payments")
	suite.egress.route("192.0.2.10:8443", sc.addr)
	createSidecarPod(t, ns, "payments-0", "payments", "192.0.2.10", true)

	r := kg(t, "token", "shop", "-n", ns)
	wantCode(t, r, 0)
	tok := strings.TrimSpace(r.out)
	if strings.Count(tok, ".") != 2 {
		t.Fatalf("token output is not a JWT: %q", r.out)
	}
	if got := sc.status(t, "/charges", "Bearer "+tok); got != http.StatusOK {
		t.Fatalf("the token does not work on the sidecar: %d", got)
	}
	// A key fenced to 185.184.111.0/24 gets no token through the API server:
	// the sidecar sees the API server's address, and says so.
	wantCode(t, kg(t, "token", "fenced", "-n", ns), ExitError, "the sidecar answered 401 invalid_client: client authentication failed (the key's allowedCIDRs apply to token requests too")

	// A scoped token and a client token (through the API-key header), as JSON.
	r = kg(t, "token", "shop", "-n", ns, "--scope", "charges:List", "-o", "json")
	var resp tokenResponse
	if err := json.Unmarshal([]byte(r.out), &resp); err != nil || resp.Scope != "charges:List" || resp.AccessToken == "" {
		t.Errorf("scoped token: %q (%v)", r.out, err)
	}
	r = kg(t, "token", "shop", "-n", ns, "--client", "acme")
	if r.code != 0 || strings.Count(strings.TrimSpace(r.out), ".") != 2 {
		t.Errorf("client token: %+v", r)
	}
	// The sidecar's refusal comes back with its words.
	wantCode(t, kg(t, "token", "shop", "-n", ns, "--scope", "charges:Create"), ExitError,
		"the sidecar answered 400 invalid_scope: scope charges:Create exceeds the key's permissions")
	wantCode(t, kg(t, "token", "idle-key", "-n", ns, "--client", "acme"), ExitError, "--client needs TokenPolicy "+ns+"/idle to set authentication.apiKeyHeader")

	// revoke --token: every sidecar refuses the token afterwards.
	open := tok
	r = kg(t, "revoke", "-p", "payments", "-n", ns, "--token", open)
	if r.code != 0 || !strings.Contains(r.out, "revoked on every sidecar of TokenPolicy payments") {
		t.Fatalf("revoke: %+v", r)
	}
	waitFor(t, propagationTimeout, "revoked token refused", func() bool { return sc.status(t, "/charges", "Bearer "+open) == http.StatusUnauthorized })
	cm := &corev1.ConfigMap{}
	if err := suite.k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: bundle.RevocationsConfigMapName("payments")}, cm); err != nil || len(cm.Data) != 1 {
		t.Errorf("revocations ConfigMap: %v %v", cm.Data, err)
	}
	if cm.ManagedFields[len(cm.ManagedFields)-1].Manager != "keygate-sidecar" {
		t.Errorf("the revocation was not written as sidecars write it: %+v", cm.ManagedFields)
	}
	wantCode(t, kg(t, "revoke", "-p", "payments", "-n", ns, "--token", "not.a.token"), ExitError,
		`the token is not one the sidecars of TokenPolicy "payments" accept`)
	r = kg(t, "revoke", "-p", "payments", "-n", ns, "--jti", "01J9Z3K2V5B7X")
	if r.code != 0 || !strings.Contains(r.out, "token 01J9Z3K2V5B7X revoked") {
		t.Errorf("revoke --jti: %+v", r)
	}

	// can-i: exit 0 allowed, 1 denied, with the reasons.
	r = kg(t, "can-i", "fenced", "GET", "/charges/ch_1", "-n", ns, "--from", "185.184.111.39")
	if r.code != 0 || !strings.HasPrefix(r.out, "yes\n") || !strings.Contains(r.out, "rules[0] GET /charges,/charges/* needs charges:List") {
		t.Errorf("can-i allowed: %+v", r)
	}
	r = kg(t, "can-i", "shop", "post", "/charges", "-n", ns)
	if r.code != 1 || !strings.Contains(r.out, "no (the sidecar answers 403, reason missing_permission)") ||
		!strings.Contains(r.out, "charges:Create NOT held (holds: charges:List)") {
		t.Errorf("can-i missing permission: %+v", r)
	}
	r = kg(t, "can-i", "fenced", "GET", "/charges", "-n", ns, "--from", "10.0.0.1", "-o", "json")
	var res canIResult
	if err := json.Unmarshal([]byte(r.out), &res); err != nil || r.code != 1 || res.Decision.Reason != "cidr" || res.KeyID != key.Status.KeyID {
		t.Errorf("can-i CIDR: %+v (%v)", r, err)
	}
	r = kg(t, "can-i", "shop", "GET", "/charges", "-n", ns, "--client", "nobody")
	if r.code != 1 || !strings.Contains(r.out, `"nobody" is not a client of this key`) {
		t.Errorf("can-i unknown client: %+v", r)
	}
	// Under enforcement Audit the answer is Enforce's, and says the request is forwarded.
	createPolicy(t, ns, "audited", keygatev1.TokenPolicySpec{Enforcement: keygatev1.EnforcementAudit})
	createKey(t, ns, "watched", keySpec("audited"))
	r = kg(t, "can-i", "watched", "GET", "/anything", "-n", ns)
	if r.code != 1 || !strings.Contains(r.out, "no under Enforce (reason no_rule); the policy is in Audit, so the sidecar forwards it") {
		t.Errorf("can-i under Audit: %+v", r)
	}
	wantCode(t, kg(t, "can-i", "ghost", "GET", "/", "-n", ns), ExitError, fmt.Sprintf(`ApiKey "ghost" not found in namespace %q`, ns))
}
