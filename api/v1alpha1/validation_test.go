package v1alpha1_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// readSamples decodes every object of every file in config/samples.
func readSamples(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "samples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("decode %s: %v", f, err)
			}
			if len(u.Object) > 0 {
				objs = append(objs, u)
			}
		}
	}
	return objs
}

func TestSamplesAreAccepted(t *testing.T) {
	ns := newNamespace(t)
	objs := readSamples(t)
	kinds := map[string]int{}
	for _, u := range objs {
		u.SetNamespace(ns)
		if err := k8sClient.Create(context.Background(), u); err != nil {
			t.Errorf("sample %s %s refused: %v", u.GetKind(), u.GetName(), err)
		}
		kinds[u.GetKind()]++
	}
	// One policy and at least one key per seed platform.
	if kinds["TokenPolicy"] < 4 || kinds["ApiKey"] < 4 {
		t.Fatalf("samples hold %d TokenPolicies and %d ApiKeys, want at least 4 of each", kinds["TokenPolicy"], kinds["ApiKey"])
	}
}

func TestDefaultsAreApplied(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	tp := &keygatev1.TokenPolicy{}
	mustUnmarshal(t, `{"apiVersion":"keygate.dev/v1alpha1","kind":"TokenPolicy","metadata":{"name":"p"},
		"spec":{"issuer":"https://api.example.com","audience":"api"}}`, tp)
	tp.Namespace = ns
	if err := k8sClient.Create(ctx, tp); err != nil {
		t.Fatal(err)
	}
	got := &keygatev1.TokenPolicy{}
	if err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "p"}, got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	checks := []struct {
		field, got, want string
	}{
		{"tokenTTL", s.TokenTTL.Duration.String(), "1h0m0s"},
		{"clientTokenTTL", s.ClientTokenTTL.Duration.String(), "15m0s"},
		{"signing.algorithm", string(s.Signing.Algorithm), "EdDSA"},
		{"signing.rotationInterval", s.Signing.RotationInterval.Duration.String(), "720h0m0s"},
		{"authentication.basic", boolString(s.Authentication.Basic), "true"},
		{"authentication.bearerSchemes", strings.Join(s.Authentication.BearerSchemes, ","), "Bearer"},
		{"grants", joinGrants(s.Grants), "api_key,client_credentials,client_token"},
		{"tokenEndpoint.paths", joinPaths(s.TokenEndpoint.Paths), "/api/token,/oauth/token,/token"},
		{"tokenEndpoint.requireTLS", strconv.FormatBool(s.TokenEndpoint.RequireTLS), "false"},
		{"maxApiKeys", itoa(int(s.MaxApiKeys)), "40"},
		{"publicPaths", joinPaths(s.PublicPaths), "/healthz"},
		{"defaultAction", string(s.DefaultAction), "Deny"},
		{"enforcement", string(s.Enforcement), "Enforce"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("TokenPolicy %s defaulted to %q, want %q", c.field, c.got, c.want)
		}
	}

	ak := &keygatev1.ApiKey{}
	mustUnmarshal(t, `{"apiVersion":"keygate.dev/v1alpha1","kind":"ApiKey","metadata":{"name":"k"},
		"spec":{"policyRef":{"name":"p"},"rotation":{"interval":"720h"},"rateLimit":{"requests":5}}}`, ak)
	ak.Namespace = ns
	if err := k8sClient.Create(ctx, ak); err != nil {
		t.Fatal(err)
	}
	if rl := ak.Spec.RateLimit; rl == nil || rl.Per == nil || rl.Per.Duration.String() != "1s" || rl.Burst != nil {
		t.Errorf("ApiKey rateLimit defaulted to %+v, want per 1s and burst unset (the bundle uses requests)", rl)
	}
	if ak.Spec.Rotation.GracePeriod == nil || ak.Spec.Rotation.GracePeriod.Duration.String() != "24h0m0s" {
		t.Errorf("ApiKey rotation.gracePeriod defaulted to %v, want 24h", ak.Spec.Rotation.GracePeriod)
	}
	if ak.Spec.Disabled {
		t.Error("ApiKey disabled defaulted to true")
	}
}

// TestInvalidManifestsAreRefused sends bad objects to the real API server and
// checks that each is refused with a message naming the offending field.
func TestInvalidManifestsAreRefused(t *testing.T) {
	ns := newNamespace(t)
	const policy = `{"apiVersion":"keygate.dev/v1alpha1","kind":"TokenPolicy","metadata":{"name":"bad"},"spec":`
	const key = `{"apiVersion":"keygate.dev/v1alpha1","kind":"ApiKey","metadata":{"name":"bad"},"spec":`
	const okPolicy = `"issuer":"https://api.example.com","audience":"api"`
	cases := []struct {
		name     string
		manifest string
		want     []string // every string must appear in the API server's message
	}{
		{"key without policyRef", key + `{"permissions":["charges:List"]}}`,
			[]string{"spec.policyRef", "Required value"}},
		{"key with empty policyRef name", key + `{"policyRef":{"name":""}}}`,
			[]string{"spec.policyRef.name"}},
		{"permission without action", key + `{"policyRef":{"name":"p"},"permissions":["charges"]}}`,
			[]string{"spec.permissions[0]"}},
		{"permission with spaces", key + `{"policyRef":{"name":"p"},"permissions":["charges: List"]}}`,
			[]string{"spec.permissions[0]"}},
		{"CIDR that is an address", key + `{"policyRef":{"name":"p"},"allowedCIDRs":["10.0.0.1"]}}`,
			[]string{"spec.allowedCIDRs[0]", "must be a CIDR block"}},
		{"CIDR out of range", key + `{"policyRef":{"name":"p"},"allowedCIDRs":["300.1.2.3/8"]}}`,
			[]string{"spec.allowedCIDRs[0]", "must be a CIDR block"}},
		{"client permission not granted by the key", key + `{"policyRef":{"name":"p"},"permissions":["charges:List"],"clients":[{"key":"acme","permissions":["refunds:Create"]}]}}`,
			[]string{"spec.clients", "every client permission must be granted"}},
		{"client permission when key has none", key + `{"policyRef":{"name":"p"},"clients":[{"key":"acme","permissions":["charges:List"]}]}}`,
			[]string{"spec.clients", "every client permission must be granted"}},
		{"duplicate client keys", key + `{"policyRef":{"name":"p"},"clients":[{"key":"acme"},{"key":"acme"}]}}`,
			[]string{"spec.clients[1]", "Duplicate value"}},
		{"grace period longer than interval", key + `{"policyRef":{"name":"p"},"rotation":{"interval":"1h","gracePeriod":"2h"}}}`,
			[]string{"spec.rotation.gracePeriod", "must not be longer than interval"}},
		{"default grace longer than short interval", key + `{"policyRef":{"name":"p"},"rotation":{"interval":"1h"}}}`,
			[]string{"spec.rotation.gracePeriod", "default 24h"}},
		{"rotation interval not a duration", key + `{"policyRef":{"name":"p"},"rotation":{"interval":"monthly"}}}`,
			[]string{"spec.rotation.interval"}},
		{"rotation interval too short", key + `{"policyRef":{"name":"p"},"rotation":{"interval":"0s","gracePeriod":"0s"}}}`,
			[]string{"spec.rotation.interval", "at least 1m"}},
		{"secretName not a DNS name", key + `{"policyRef":{"name":"p"},"secretName":"Not_Valid"}}`,
			[]string{"spec.secretName"}},
		{"policy without issuer", policy + `{"audience":"api"}}`,
			[]string{"spec.issuer", "Required value"}},
		{"issuer not a URL", policy + `{"issuer":"payments","audience":"api"}}`,
			[]string{"spec.issuer"}},
		{"negative token TTL", policy + `{` + okPolicy + `,"tokenTTL":"-1h"}}`,
			[]string{"spec.tokenTTL"}},
		{"zero client token TTL", policy + `{` + okPolicy + `,"clientTokenTTL":"0s"}}`,
			[]string{"spec.clientTokenTTL", "between 1s and 8760h"}},
		{"unknown algorithm", policy + `{` + okPolicy + `,"signing":{"algorithm":"none"}}}`,
			[]string{"spec.signing.algorithm", "Unsupported value"}},
		{"token path without slash", policy + `{` + okPolicy + `,"tokenEndpoint":{"paths":["token"]}}}`,
			[]string{"spec.tokenEndpoint.paths[0]"}},
		{"requireTLS not a boolean", policy + `{` + okPolicy + `,"tokenEndpoint":{"requireTLS":"yes"}}}`,
			[]string{"spec.tokenEndpoint.requireTLS", "boolean"}},
		{"empty bearerSchemes", policy + `{` + okPolicy + `,"authentication":{"bearerSchemes":[]}}}`,
			[]string{"spec.authentication.bearerSchemes"}},
		{"bearer scheme with a space", policy + `{` + okPolicy + `,"authentication":{"bearerSchemes":["Bearer token"]}}}`,
			[]string{"spec.authentication.bearerSchemes[0]"}},
		{"Basic as a bearer scheme", policy + `{` + okPolicy + `,"authentication":{"bearerSchemes":["basic"]}}}`,
			[]string{"spec.authentication.bearerSchemes", "must not contain Basic"}},
		{"reserved apiKeyHeader", policy + `{` + okPolicy + `,"authentication":{"apiKeyHeader":"Authorization"}}}`,
			[]string{"spec.authentication.apiKeyHeader", "reserved header"}},
		{"unknown grant", policy + `{` + okPolicy + `,"grants":["implicit"]}}`,
			[]string{"spec.grants[0]", "Unsupported value"}},
		{"maxApiKeys zero", policy + `{` + okPolicy + `,"maxApiKeys":0}}`,
			[]string{"spec.maxApiKeys"}},
		{"trusted proxy not a CIDR", policy + `{` + okPolicy + `,"trustedProxies":["proxy.local"]}}`,
			[]string{"spec.trustedProxies[0]", "must be a CIDR block"}},
		{"rule without paths", policy + `{` + okPolicy + `,"rules":[{"permission":"charges:List"}]}}`,
			[]string{"spec.rules[0].paths", "Required value"}},
		{"rule with bad method", policy + `{` + okPolicy + `,"rules":[{"methods":["FETCH"],"paths":["/a"],"permission":"a:B"}]}}`,
			[]string{"spec.rules[0].methods[0]", "Unsupported value"}},
		{"unknown defaultAction", policy + `{` + okPolicy + `,"defaultAction":"Allow"}}`,
			[]string{"spec.defaultAction", "Unsupported value"}},
		{"staleAfter too short", policy + `{` + okPolicy + `,"staleAfter":"10m"}}`,
			[]string{"spec.staleAfter", "at least 1h"}},
		{"staleAfter not a duration", policy + `{` + okPolicy + `,"staleAfter":"30d"}}`,
			[]string{"spec.staleAfter"}},
		{"unknown enforcement", policy + `{` + okPolicy + `,"enforcement":"DryRun"}}`,
			[]string{"spec.enforcement", "Unsupported value"}},
		{"rate limit without requests", policy + `{` + okPolicy + `,"rateLimit":{"per":"1s"}}}`,
			[]string{"spec.rateLimit.requests", "Required value"}},
		{"rate limit of zero requests", policy + `{` + okPolicy + `,"rateLimit":{"requests":0}}}`,
			[]string{"spec.rateLimit.requests"}},
		{"rate limit period too short", policy + `{` + okPolicy + `,"rateLimit":{"requests":10,"per":"100ms"}}}`,
			[]string{"spec.rateLimit.per", "between 1s and 24h"}},
		{"rate limit period not a duration", key + `{"policyRef":{"name":"p"},"rateLimit":{"requests":10,"per":"minute"}}}`,
			[]string{"spec.rateLimit.per"}},
		{"rate limit burst zero", key + `{"policyRef":{"name":"p"},"rateLimit":{"requests":10,"burst":0}}}`,
			[]string{"spec.rateLimit.burst"}},
		{"client rate limit too high", key + `{"policyRef":{"name":"p"},"clients":[{"key":"acme","rateLimit":{"requests":2000000}}]}}`,
			[]string{"spec.clients[0].rateLimit.requests"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u := &unstructured.Unstructured{}
			mustUnmarshal(t, c.manifest, &u.Object)
			u.SetNamespace(ns)
			err := k8sClient.Create(context.Background(), u)
			if err == nil {
				_ = k8sClient.Delete(context.Background(), u)
				t.Fatalf("accepted, want refusal naming %q", c.want)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("refused with %v, want an Invalid error from validation", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q does not contain %q", err.Error(), w)
				}
			}
		})
	}
}

// TestSchemaFieldsAreDescribed checks that every field of both CRDs, as the
// API server serves them, has a description: that is kubectl explain's text.
func TestSchemaFieldsAreDescribed(t *testing.T) {
	for _, name := range []string{"apikeys.keygate.dev", "tokenpolicies.keygate.dev"} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := k8sClient.Get(context.Background(), types.NamespacedName{Name: name}, crd); err != nil {
			t.Fatal(err)
		}
		root := crd.Spec.Versions[0].Schema.OpenAPIV3Schema
		for _, part := range []string{"spec", "status"} {
			prop := root.Properties[part]
			if prop.Description == "" {
				t.Errorf("%s: %s has no description", name, part)
			}
			walkSchema(t, name+" "+part, prop)
		}
	}
}

func walkSchema(t *testing.T, path string, s apiextensionsv1.JSONSchemaProps) {
	t.Helper()
	for field, prop := range s.Properties {
		p := path + "." + field
		if prop.Description == "" {
			t.Errorf("%s has no description", p)
		}
		walkSchema(t, p, prop)
	}
	if s.Items != nil && s.Items.Schema != nil {
		walkSchema(t, path+"[]", *s.Items.Schema)
	}
}

func mustUnmarshal(t *testing.T, doc string, into any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(doc), into); err != nil {
		t.Fatalf("decode test manifest: %v", err)
	}
}

func boolString(b *bool) string {
	if b == nil {
		return "<nil>"
	}
	if *b {
		return "true"
	}
	return "false"
}

func joinGrants(gs []keygatev1.GrantType) string {
	s := make([]string, len(gs))
	for i, g := range gs {
		s[i] = string(g)
	}
	return strings.Join(s, ",")
}

func joinPaths(ps []keygatev1.URLPath) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ",")
}

func itoa(i int) string { return strconv.Itoa(i) }
