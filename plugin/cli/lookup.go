package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// keyNotFound is the error of a missing ApiKey.
type keyNotFound struct{ msg string }

func (e keyNotFound) Error() string { return e.msg }

// getKey reads an ApiKey. When it does not exist in ns but does elsewhere,
// the error says where, so `-n` is the obvious fix.
func (s *session) getKey(ctx context.Context, ns, name string) (*keygatev1.ApiKey, error) {
	key := &keygatev1.ApiKey{}
	err := s.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, key)
	if err == nil {
		return key, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("read ApiKey %s/%s: %w", ns, name, err)
	}
	if others := s.namespacesOf(ctx, name); len(others) > 0 {
		return nil, keyNotFound{fmt.Sprintf("ApiKey %q not found in namespace %q; it exists in namespace %s (use -n)", name, ns, strings.Join(others, ", "))}
	}
	return nil, keyNotFound{fmt.Sprintf("ApiKey %q not found in namespace %q", name, ns)}
}

// namespacesOf lists the namespaces holding an ApiKey called name; it is a
// hint only, so an error (no cluster-wide list permission) yields none.
func (s *session) namespacesOf(ctx context.Context, name string) []string {
	var out []string
	err := s.eachKeyPage(ctx, func(keys []keygatev1.ApiKey) {
		for _, k := range keys {
			if k.Name == name {
				out = append(out, fmt.Sprintf("%q", k.Namespace))
			}
		}
	}, client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", name)})
	if err != nil {
		return nil
	}
	sort.Strings(out)
	return out
}

// listKeys lists the ApiKeys of ns (all namespaces when ns is empty)
// matching selector, sorted by namespace and name.
func (s *session) listKeys(ctx context.Context, ns string, selector labels.Selector) ([]keygatev1.ApiKey, error) {
	opts := []client.ListOption{client.MatchingLabelsSelector{Selector: selector}}
	if ns != "" {
		opts = append(opts, client.InNamespace(ns))
	}
	var keys []keygatev1.ApiKey
	if err := s.eachKeyPage(ctx, func(page []keygatev1.ApiKey) { keys = append(keys, page...) }, opts...); err != nil {
		return nil, fmt.Errorf("list ApiKeys: %w", err)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		return a.Namespace < b.Namespace || a.Namespace == b.Namespace && a.Name < b.Name
	})
	return keys, nil
}

// defaultListPageSize is Options.ListPageSize's default.
const defaultListPageSize = 500

// eachKeyPage lists the ApiKeys matching opts s.pageSize at a time (the API
// server's chunking, as kubectl get does) and hands each page to fn.
func (s *session) eachKeyPage(ctx context.Context, fn func([]keygatev1.ApiKey), opts ...client.ListOption) error {
	cont := ""
	for {
		list := &keygatev1.ApiKeyList{}
		if err := s.client.List(ctx, list, append(opts, client.Limit(s.pageSize), client.Continue(cont))...); err != nil {
			return err
		}
		fn(list.Items)
		if cont = list.Continue; cont == "" {
			return nil
		}
	}
}

// getPolicy reads a TokenPolicy.
func (s *session) getPolicy(ctx context.Context, ns, name string) (*keygatev1.TokenPolicy, error) {
	p := &keygatev1.TokenPolicy{}
	if err := s.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, p); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("TokenPolicy %q not found in namespace %q", name, ns)
		}
		return nil, fmt.Errorf("read TokenPolicy %s/%s: %w", ns, name, err)
	}
	return p, nil
}

// readBundle reads and decodes the bundle a policy's sidecars load, with the
// same decoder they use; a sharded bundle is read whole (index and shards).
func (s *session) readBundle(ctx context.Context, ns, policy string) (*bundle.Bundle, error) {
	sec := &corev1.Secret{}
	name := bundle.SecretName(policy)
	if err := s.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sec); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("bundle Secret %s/%s does not exist yet", ns, name)
		}
		return nil, fmt.Errorf("read bundle Secret %s/%s: %w", ns, name, err)
	}
	data, ok := sec.Data[bundle.SecretDataKey]
	if !ok {
		return nil, fmt.Errorf("bundle Secret %s/%s has no %s", ns, name, bundle.SecretDataKey)
	}
	b, err := bundle.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("bundle Secret %s/%s: %w", ns, name, err)
	}
	if b.Version != bundle.FormatVersionV2 {
		return b, nil
	}
	// A sharded bundle: the index and the shards it names, each of the
	// index's generation, make up what the sidecars run on.
	shards := make([]*bundle.Shard, 0, len(b.Shards))
	for _, shardName := range b.Shards {
		sec := &corev1.Secret{}
		if err := s.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: shardName}, sec); err != nil {
			return nil, fmt.Errorf("read bundle shard %s/%s: %w", ns, shardName, err)
		}
		shard, err := bundle.ParseShard(sec.Data[bundle.SecretDataKey])
		if err != nil {
			return nil, fmt.Errorf("bundle shard %s/%s: %w", ns, shardName, err)
		}
		shards = append(shards, shard)
	}
	all, err := bundle.Assemble(b, shards)
	if err != nil {
		return nil, fmt.Errorf("bundle Secret %s/%s: %w", ns, name, err)
	}
	return all, nil
}

// bundleCache reads each policy's bundle once per command.
type bundleCache struct {
	s *session
	m map[string]*bundle.Bundle
}

func (c *bundleCache) get(ctx context.Context, ns, policy string) *bundle.Bundle {
	if c.m == nil {
		c.m = map[string]*bundle.Bundle{}
	}
	k := ns + "/" + policy
	if b, ok := c.m[k]; ok {
		return b
	}
	b, err := c.s.readBundle(ctx, ns, policy)
	if err != nil {
		b = nil
	}
	c.m[k] = b
	return b
}
