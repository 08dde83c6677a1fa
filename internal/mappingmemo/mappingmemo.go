// Package mappingmemo keeps the REST mappings a RESTMapper found, so that a
// lookup repeated on every cache read costs a map read.
//
// controller-runtime's cache asks its RESTMapper whether an object is
// namespaced on every Get and List when it watches a list of namespaces
// (--watch-namespaces): at 100,000 ApiKeys that lookup, through the dynamic
// mapper's lock and its priority and multi mappers, was a tenth of the
// manager's CPU. Only found mappings are kept; a kind not (yet) served is
// asked again each time, so a CRD installed later is found as before.
package mappingmemo

import (
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Mapper is a RESTMapper whose RESTMapping remembers what it found for a
// kind and one version; every other method is the wrapped mapper's.
type Mapper struct {
	meta.RESTMapper
	mu    sync.RWMutex
	found map[key]*meta.RESTMapping
}

type key struct {
	gk      schema.GroupKind
	version string
}

// New wraps m.
func New(m meta.RESTMapper) *Mapper {
	return &Mapper{RESTMapper: m, found: map[key]*meta.RESTMapping{}}
}

// RESTMapping returns the mapping for gk in the given version, from memory
// when it was found before. Calls with no or several versions are passed on.
func (m *Mapper) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	if len(versions) != 1 {
		return m.RESTMapper.RESTMapping(gk, versions...)
	}
	k := key{gk, versions[0]}
	m.mu.RLock()
	kept, ok := m.found[k]
	m.mu.RUnlock()
	if ok {
		mapping := *kept // a copy: callers may change theirs
		return &mapping, nil
	}
	mapping, err := m.RESTMapper.RESTMapping(gk, versions...)
	if err != nil {
		return nil, err
	}
	copied := *mapping
	m.mu.Lock()
	m.found[k] = &copied
	m.mu.Unlock()
	return mapping, nil
}
