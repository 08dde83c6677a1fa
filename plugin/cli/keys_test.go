package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers"
)

func keySpec(policy string, perms ...keygatev1.Permission) keygatev1.ApiKeySpec {
	return keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: policy}, Permissions: perms}
}

func wantCode(t *testing.T, r result, code int, stderrHas ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d (stderr %q)", r.code, code, r.err)
	}
	for _, s := range stderrHas {
		if !strings.Contains(r.err, s) {
			t.Errorf("stderr %q does not say %q", r.err, s)
		}
	}
}

func secretOf(t *testing.T, ns, name string) (keyID, secret string) {
	t.Helper()
	k := &keygatev1.ApiKey{}
	if err := suite.k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, k); err != nil {
		t.Fatal(err)
	}
	s := &corev1.Secret{}
	if err := suite.k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: k.Status.SecretName}, s); err != nil {
		t.Fatal(err)
	}
	return string(s.Data[controllers.CredentialsKeyID]), string(s.Data[controllers.CredentialsSecret])
}

func TestUsageAndVersion(t *testing.T) {
	wantCode(t, kg(t, "rotate"), ExitUsage, "give at least one API key name, or --all")
	wantCode(t, kg(t, "rotate", "a", "--all"), ExitUsage, "not both")
	wantCode(t, kg(t, "status", "-o", "xml"), ExitUsage, `unknown output format "xml"`)
	wantCode(t, kg(t, "credentials"), ExitUsage, "expected one API key name")
	wantCode(t, kg(t, "credentials", "k", "--format", "toml"), ExitUsage, `unknown --format "toml"`)
	wantCode(t, kg(t, "can-i", "k", "GET"), ExitUsage, "expected APIKEY METHOD PATH")
	wantCode(t, kg(t, "can-i", "k", "GET", "/x", "--from", "nowhere"), ExitUsage, "is not an IP address")
	wantCode(t, kg(t, "revoke", "--jti", "x"), ExitUsage, "-p POLICY is required")
	wantCode(t, kg(t, "revoke", "-p", "p"), ExitUsage, "exactly one of --jti and --token")
	wantCode(t, kg(t, "frobnicate"), ExitUsage, "unknown command")
	wantCode(t, kg(t, "status", "--no-such-flag"), ExitUsage, "unknown flag")

	r := kg(t, "version")
	if r.code != 0 || !strings.HasPrefix(r.out, "kubectl-keygate ") {
		t.Errorf("version: %+v", r)
	}
	r = kg(t, "rotate", "--help")
	if r.code != 0 || !strings.Contains(r.out, "kubectl keygate rotate payments --wait") {
		t.Errorf("rotate --help lacks its examples: %+v", r)
	}
	r = kg(t, "completion", "bash")
	if r.code != 0 || !strings.Contains(r.out, "__start_kubectl-keygate") {
		t.Errorf("completion bash: code %d, %d bytes", r.code, len(r.out))
	}
}

func TestStatusCredentialsToggle(t *testing.T) {
	ns := createNamespace(t, "status")
	elsewhere := createNamespace(t, "elsewhere")
	createPolicy(t, ns, "payments", keygatev1.TokenPolicySpec{MaxApiKeys: 10})
	createKey(t, ns, "billing", keySpec("payments", "charges:List"))
	createPolicy(t, elsewhere, "payments", keygatev1.TokenPolicySpec{})
	createKey(t, elsewhere, "stray", keySpec("payments"))
	keyID, secret := secretOf(t, ns, "billing")

	// status: one line per key, nothing secret.
	r := kg(t, "status", "-n", ns)
	wantCode(t, r, 0)
	for _, want := range []string{"NAME", "IN BUNDLE", "billing", "payments", keyID, "yes"} {
		if !strings.Contains(r.out, want) {
			t.Errorf("status lacks %q:\n%s", want, r.out)
		}
	}
	if strings.Contains(r.out+r.err, secret) {
		t.Error("status printed the secret")
	}
	r = kg(t, "status", "-A", "-o", "yaml")
	if r.code != 0 || !strings.Contains(r.out, "namespace: "+elsewhere) || !strings.Contains(r.out, "name: billing") {
		t.Errorf("status -A -o yaml: %+v", r)
	}
	r = kg(t, "status", "-p", "payments", "-n", ns)
	if r.code != 0 || !strings.Contains(r.out, "API keys:     1 (maxApiKeys 10); 1 in the bundle") || !strings.Contains(r.out, "current") {
		t.Errorf("status -p: %+v", r)
	}

	// Failure paths name the problem.
	wantCode(t, kg(t, "status", "nope", "-n", ns), ExitError, fmt.Sprintf(`ApiKey "nope" not found in namespace %q`, ns))
	wantCode(t, kg(t, "credentials", "stray", "-n", ns), ExitError,
		fmt.Sprintf(`ApiKey "stray" not found in namespace %q; it exists in namespace `, ns), fmt.Sprintf("%q", elsewhere), "(use -n)")
	wantCode(t, kg(t, "status", "-p", "nope", "-n", ns), ExitError, fmt.Sprintf(`TokenPolicy "nope" not found in namespace %q`, ns))

	// credentials: every format, the warning only on a terminal.
	r = kg(t, "credentials", "billing", "-n", ns)
	wantBasic := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(keyID+":"+secret)) + "\n"
	if r.code != 0 || r.out != wantBasic || r.err != "" {
		t.Errorf("credentials (header): %+v", r)
	}
	if r = kg(t, "credentials", "billing", "-n", ns, "--format", "basic"); r.out != keyID+":"+secret+"\n" {
		t.Errorf("credentials basic: %q", r.out)
	}
	if r = kg(t, "credentials", "billing", "-n", ns, "--format", "env"); r.out != "KEYGATE_KEY_ID="+keyID+"\nKEYGATE_SECRET="+secret+"\n" {
		t.Errorf("credentials env: %q", r.out)
	}
	r = kg(t, "credentials", "billing", "-n", ns, "--format", "json")
	var body map[string]string
	if err := json.Unmarshal([]byte(r.out), &body); err != nil || body["apiKey"] != keyID || body["secret"] != secret {
		t.Errorf("credentials json: %q (%v)", r.out, err)
	}
	r = kgWith(t, func(o *Options) { o.IsTerminal = func(io.Writer) bool { return true } }, "credentials", "billing", "-n", ns)
	if !strings.Contains(r.err, "Warning: this prints the secret of ApiKey "+ns+"/billing") || strings.Contains(r.err, secret) {
		t.Errorf("terminal warning: %q", r.err)
	}

	// disable/enable flip spec.disabled; the key leaves and returns to the bundle.
	r = kg(t, "disable", "billing", "-n", ns)
	if r.code != 0 || r.out != "apikey/billing disabled\n" {
		t.Errorf("disable: %+v", r)
	}
	waitFor(t, operatorTimeout, "disabled key out of the bundle", func() bool {
		r := kg(t, "status", "billing", "-n", ns, "-o", "json")
		return strings.Contains(r.out, `"inBundle": "no"`) && strings.Contains(r.out, `"reason": "Disabled"`)
	})
	if r = kg(t, "disable", "billing", "-n", ns); r.out != "apikey/billing already disabled\n" {
		t.Errorf("disable twice: %+v", r)
	}
	if r = kg(t, "enable", "billing", "-n", ns); r.code != 0 || r.out != "apikey/billing enabled\n" {
		t.Errorf("enable: %+v", r)
	}
	waitFor(t, operatorTimeout, "enabled key back in the bundle", func() bool {
		return strings.Contains(kg(t, "status", "billing", "-n", ns, "-o", "json").out, `"inBundle": "yes"`)
	})
	wantCode(t, kg(t, "disable", "nope", "-n", ns), ExitError, `ApiKey "nope" not found`)

	// Completion lists the namespace's keys.
	r = kg(t, "__complete", "status", "-n", ns, "")
	if r.code != 0 || !strings.Contains(r.out, "billing\n") || strings.Contains(r.out, "stray") {
		t.Errorf("completion of keys: %+v", r)
	}
}

func TestRotate(t *testing.T) {
	ns := createNamespace(t, "rotate")
	createPolicy(t, ns, "payments", keygatev1.TokenPolicySpec{})
	grace := &metav1.Duration{Duration: time.Hour}
	spec := keySpec("payments")
	spec.Rotation = &keygatev1.KeyRotation{GracePeriod: grace}
	createKey(t, ns, "a", spec)
	labelled := keySpec("payments")
	createKey(t, ns, "b", labelled)
	_, before := secretOf(t, ns, "a")

	r := kg(t, "rotate", "a", "-n", ns, "--wait", "--timeout", "30s")
	wantCode(t, r, 0)
	_, after := secretOf(t, ns, "a")
	if after == before {
		t.Fatal("the secret did not change")
	}
	for _, want := range []string{"apikey/a rotated: secret version 2 is in the bundle of its policy",
		"previous secret works until", "kubectl keygate credentials a -n " + ns} {
		if !strings.Contains(r.out, want) {
			t.Errorf("rotate --wait output lacks %q:\n%s", want, r.out)
		}
	}
	// The grace ends at the rotation + 1h rounded up to the second: 60m or
	// 59m left, depending on how long the wait took.
	if !strings.Contains(r.out, "(60m left)") && !strings.Contains(r.out, "(59m left)") {
		t.Errorf("rotate --wait output lacks the grace left (59m or 60m):\n%s", r.out)
	}
	if strings.Contains(r.out+r.err, after) || strings.Contains(r.out+r.err, before) {
		t.Error("rotate printed a secret")
	}

	// --all -l: only the labelled key; structured output.
	k := &keygatev1.ApiKey{}
	if err := suite.k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "b"}, k); err != nil {
		t.Fatal(err)
	}
	k.Labels = map[string]string{"team": "billing"}
	if err := suite.k8s.Update(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	r = kg(t, "rotate", "--all", "-l", "team=billing", "-n", ns, "--wait", "-o", "json")
	var res []rotateResult
	if err := json.Unmarshal([]byte(r.out), &res); err != nil || len(res) != 1 || res[0].Name != "b" || res[0].SecretVersion != 2 || !res[0].InBundle {
		t.Errorf("rotate --all -l: %q (%v)", r.out, err)
	}
	wantCode(t, kg(t, "rotate", "--all", "-l", "team=nobody", "-n", ns), ExitError, "no ApiKeys match in namespace "+ns+" with labels team=nobody")
	wantCode(t, kg(t, "rotate", "ghost", "-n", ns), ExitError, fmt.Sprintf(`ApiKey "ghost" not found in namespace %q`, ns))

	// Without --wait: the request only.
	r = kg(t, "rotate", "a", "-n", ns)
	if r.code != 0 || !strings.Contains(r.out, "apikey/a rotation requested (keygate.dev/rotate=") {
		t.Errorf("rotate: %+v", r)
	}

	// A disabled key rotates, but no bundle carries it: --wait times out and says why.
	if res := kg(t, "disable", "a", "-n", ns); res.code != 0 {
		t.Fatal(res.err)
	}
	waitFor(t, operatorTimeout, "disabled", func() bool {
		return strings.Contains(kg(t, "status", "a", "-n", ns, "-o", "json").out, `"inBundle": "no"`)
	})
	wantCode(t, kg(t, "rotate", "a", "-n", ns, "--wait", "--timeout", "8s"), ExitError,
		`timed out after 8s: ApiKey `+ns+`/a has secret version 4, but the bundle of TokenPolicy "payments" carries no entry for it (the key is not Ready: Disabled)`)
}

// status reads a sharded bundle (maxApiKeys above bundle.KeysPerShard) whole:
// the index and the shards it names.
func TestStatusOfShardedPolicy(t *testing.T) {
	ns := createNamespace(t, "sharded")
	createPolicy(t, ns, "big", keygatev1.TokenPolicySpec{MaxApiKeys: 5000})
	for _, name := range []string{"one", "two", "three"} {
		createKey(t, ns, name, keySpec("big", "charges:List"))
	}
	waitFor(t, operatorTimeout, "every key in the sharded bundle", func() bool {
		r := kg(t, "status", "-p", "big", "-n", ns)
		return r.code == 0 && strings.Contains(r.out, "3 in the bundle")
	})
	r := kg(t, "status", "-n", ns, "-o", "json")
	if r.code != 0 || strings.Count(r.out, `"inBundle": "yes"`) != 3 {
		t.Errorf("status of the keys of a sharded policy: %+v", r)
	}
}
