package controllers

import (
	"bytes"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/keygate-dev/keygate/api/bundle"
)

// credsMemo keeps, per policy, what a bundle pass reads of each credentials
// Secret at one resourceVersion: the parsed and checked credentials and the
// current secret's digest with one hash key. Both depend on nothing else, and
// at 100,000 keys parsing every Secret and computing every HMAC again, pass
// after pass, was a fifth of the manager's CPU (make bench-scale).
type credsMemo struct {
	mu sync.Mutex
	m  map[types.NamespacedName]map[string]*memoCreds
}

type memoCreds struct {
	resourceVersion string
	creds           credentials
	hashKeyID       string
	digest          []byte
}

// credsPass is the memo of one pass of one policy: what it reads is kept
// for the next pass, what it does not read (Secrets gone) is dropped.
type credsPass struct {
	old, cur map[string]*memoCreds
	// hashKey and hashKeyID are the last hash key read with and its ID, one
	// string for all the entries digested with it.
	hashKey   []byte
	hashKeyID string
}

// begin starts a pass of policy.
func (m *credsMemo) begin(policy types.NamespacedName) *credsPass {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.m[policy]
	return &credsPass{old: old, cur: make(map[string]*memoCreds, len(old))}
}

// end keeps what the pass of policy read.
func (m *credsMemo) end(policy types.NamespacedName, p *credsPass) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[types.NamespacedName]map[string]*memoCreds{}
	}
	m.m[policy] = p.cur
}

// forget drops a deleted policy's memo.
func (m *credsMemo) forget(policy types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.m, policy)
}

// read returns the credentials of s and the digest of its current secret
// with hashKey; nil when s is nil. The credentials returned do not hold the
// secret itself (Secret is empty): the memo keeps its digest, not a copy of
// every key's secret (some 50 bytes a key more on the heap, and a secret
// kept longer than needed); a new hash key re-reads it from s.
func (p *credsPass) read(s *corev1.Secret, hashKey []byte) (*credentials, []byte) {
	if s == nil {
		return nil, nil
	}
	if p.hashKeyID == "" || !bytes.Equal(p.hashKey, hashKey) {
		p.hashKey, p.hashKeyID = hashKey, hashKeyID(hashKey)
	}
	id := p.hashKeyID
	e := p.cur[s.Name]
	if e == nil || e.resourceVersion != s.ResourceVersion {
		e = p.old[s.Name]
	}
	if e == nil || e.resourceVersion != s.ResourceVersion {
		e = &memoCreds{resourceVersion: s.ResourceVersion, creds: readCredentials(s)}
		e.digest, e.hashKeyID = bundle.Digest(hashKey, e.creds.Secret), id
		e.creds.Secret = ""
	}
	if e.hashKeyID != id {
		e.hashKeyID, e.digest = id, bundle.Digest(hashKey, readCredentials(s).Secret)
	}
	p.cur[s.Name] = e
	return &e.creds, e.digest
}
