package mappingmemo

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var apiKeys = schema.GroupVersionKind{Group: "keygate.dev", Version: "v1alpha1", Kind: "ApiKey"}

func addApiKeys(m *meta.DefaultRESTMapper) {
	gvr := apiKeys.GroupVersion().WithResource
	m.AddSpecific(apiKeys, gvr("apikeys"), gvr("apikey"), meta.RESTScopeNamespace)
}

// counting counts the lookups that reach the wrapped mapper.
type counting struct {
	*meta.DefaultRESTMapper
	calls int
}

func (c *counting) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	c.calls++
	return c.DefaultRESTMapper.RESTMapping(gk, versions...)
}

func TestFoundMappingsAreKept(t *testing.T) {
	inner := &counting{DefaultRESTMapper: meta.NewDefaultRESTMapper(nil)}
	addApiKeys(inner.DefaultRESTMapper)
	m := New(inner)
	for i := range 3 {
		got, err := m.RESTMapping(apiKeys.GroupKind(), apiKeys.Version)
		if err != nil {
			t.Fatal(err)
		}
		if got.Scope.Name() != meta.RESTScopeNameNamespace || got.Resource.Resource != "apikeys" || got.GroupVersionKind != apiKeys {
			t.Fatalf("lookup %d: got %+v", i, got)
		}
		got.Resource.Resource = "changed by a caller"
	}
	if inner.calls != 1 {
		t.Fatalf("the wrapped mapper was asked %d times, want 1", inner.calls)
	}
}

func TestMissesAreAskedAgain(t *testing.T) {
	inner := &counting{DefaultRESTMapper: meta.NewDefaultRESTMapper(nil)}
	m := New(inner)
	if _, err := m.RESTMapping(apiKeys.GroupKind(), apiKeys.Version); !meta.IsNoMatchError(err) {
		t.Fatalf("before the kind is served: got %v, want a no-match error", err)
	}
	addApiKeys(inner.DefaultRESTMapper) // the CRD is installed
	got, err := m.RESTMapping(apiKeys.GroupKind(), apiKeys.Version)
	if err != nil || got.GroupVersionKind != apiKeys {
		t.Fatalf("after the kind is served: got %+v, %v", got, err)
	}
	if inner.calls != 2 {
		t.Fatalf("the wrapped mapper was asked %d times, want 2", inner.calls)
	}
}

func TestOtherVersionCountsArePassedOn(t *testing.T) {
	inner := &counting{DefaultRESTMapper: meta.NewDefaultRESTMapper([]schema.GroupVersion{apiKeys.GroupVersion()})}
	addApiKeys(inner.DefaultRESTMapper)
	m := New(inner)
	for range 2 {
		if _, err := m.RESTMapping(apiKeys.GroupKind()); err != nil {
			t.Fatal(err)
		}
	}
	if inner.calls != 2 {
		t.Fatalf("the wrapped mapper was asked %d times, want 2 (no version: not kept)", inner.calls)
	}
}

func BenchmarkRESTMapping(b *testing.B) {
	d := meta.NewDefaultRESTMapper(nil)
	addApiKeys(d)
	// As controller-runtime's dynamic mapper delegates (without its lock).
	inner := meta.PriorityRESTMapper{Delegate: meta.MultiRESTMapper{d}}
	for _, c := range []struct {
		name string
		m    meta.RESTMapper
	}{{"wrapped", inner}, {"memo", New(inner)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.m.RESTMapping(apiKeys.GroupKind(), apiKeys.Version); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
