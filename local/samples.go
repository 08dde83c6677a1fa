package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// LocalKey is the ApiKey make run adds to the Silverflow sample: the sample's
// own key (data-lake) only works from its allowed CIDRs, which 127.0.0.1 is
// not in, so the flows use this one for what works and data-lake for the
// CIDR refusal.
const LocalKey = "silverflow-local"

// localKey is LocalKey: Silverflow's charges:List only (so reports answer
// 403), any address, the default rotation grace period (24h).
func localKey(namespace string) *keygatev1.ApiKey {
	return &keygatev1.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: LocalKey},
		Spec: keygatev1.ApiKeySpec{
			PolicyRef:   keygatev1.PolicyReference{Name: "silverflow"},
			Permissions: []keygatev1.Permission{"charges:List"},
		},
	}
}

// readSamples decodes every manifest of dir (the kustomization itself aside).
func readSamples(dir string) ([]*unstructured.Unstructured, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var objs []*unstructured.Unstructured
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f) // #nosec G304 -- the repository's samples
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			objs = append(objs, u)
		}
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("no manifests in %s", dir)
	}
	return objs, nil
}

// applySamples creates the samples of dir and LocalKey in namespace and
// returns the names of the TokenPolicies and ApiKeys.
func applySamples(ctx context.Context, c client.Client, dir, namespace string) (policies, keys []string, err error) {
	objs, err := readSamples(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, u := range objs {
		u.SetNamespace(namespace)
		if err := c.Create(ctx, u); err != nil {
			return nil, nil, fmt.Errorf("create %s %s: %w", u.GetKind(), u.GetName(), err)
		}
		switch u.GetKind() {
		case "TokenPolicy":
			policies = append(policies, u.GetName())
		case "ApiKey":
			keys = append(keys, u.GetName())
		}
	}
	if err := c.Create(ctx, localKey(namespace)); err != nil {
		return nil, nil, fmt.Errorf("create ApiKey %s: %w", LocalKey, err)
	}
	return policies, append(keys, LocalKey), nil
}

// Credentials are what the operator wrote to an ApiKey's credentials Secret.
type Credentials struct {
	// ApiKey is the ApiKey's name; Policy its TokenPolicy's.
	ApiKey, Policy string
	// Key is the key ID; Secret the secret; Authorization the ready Basic value.
	Key, Secret, Authorization string
	// SecretName is the credentials Secret's name.
	SecretName string
}

// waitReady waits until every policy and key is Ready and every key's
// credentials Secret exists, and returns the credentials by ApiKey name.
func waitReady(ctx context.Context, c client.Client, namespace string, policies, keys []string, timeout time.Duration) (map[string]Credentials, error) {
	creds := map[string]Credentials{}
	var pending []string
	err := poll(ctx, timeout, func() bool {
		pending = pending[:0]
		for _, name := range policies {
			p := &keygatev1.TokenPolicy{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, p); err != nil || !current(p.Generation, p.Status.Conditions) {
				pending = append(pending, "TokenPolicy "+name)
			}
		}
		for _, name := range keys {
			if _, ok := creds[name]; ok {
				continue
			}
			k := &keygatev1.ApiKey{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, k); err != nil || !current(k.Generation, k.Status.Conditions) {
				pending = append(pending, "ApiKey "+name)
				continue
			}
			s := &corev1.Secret{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: k.Status.SecretName}, s); err != nil {
				pending = append(pending, "Secret "+k.Status.SecretName)
				continue
			}
			creds[name] = Credentials{ApiKey: name, Policy: k.Spec.PolicyRef.Name, SecretName: s.Name,
				Key: string(s.Data["key"]), Secret: string(s.Data["secret"]), Authorization: string(s.Data["authorization"])}
		}
		return len(pending) == 0
	})
	if err != nil {
		return nil, fmt.Errorf("not Ready: %s: %w", strings.Join(pending, ", "), err)
	}
	return creds, nil
}

// current reports whether the Ready condition is True for this generation.
func current(generation int64, conds []metav1.Condition) bool {
	c := meta.FindStatusCondition(conds, keygatev1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == generation
}

// pollInterval is how often the launcher re-checks a condition it waits for.
const pollInterval = 50 * time.Millisecond

// poll calls cond every pollInterval until it holds, ctx ends or timeout passes.
func poll(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %s: %w", timeout, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
