// Package config loads the policy bundle and compiles it into the immutable
// runtime form the request path reads (maps, parsed prefixes, compiled rules,
// signing keys), and keeps the last good one in force. Sources: a file
// (--bundle-file) or the bundle Secret in Kubernetes.
package config

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/authz"
	"github.com/keygate-dev/keygate/sidecar/clientaddr"
	"github.com/keygate-dev/keygate/sidecar/quota"
	"github.com/keygate-dev/keygate/sidecar/token"
)

// Grants a policy may enable.
const (
	GrantAPIKey            = "api_key"
	GrantClientCredentials = "client_credentials"
	GrantClientToken       = "client_token"
	GrantPassword          = "password"
)

// Runtime is a compiled bundle. It is immutable once built.
type Runtime struct {
	Policy         bundle.Policy
	HashKey        []byte
	PolicyCIDRs    []netip.Prefix
	Resolver       clientaddr.Resolver
	PublicPaths    map[string]bool
	TokenPaths     map[string]bool
	Grants         map[string]bool
	Rules          *authz.Rules
	Keyset         *token.Keyset
	TokenTTL       time.Duration
	ClientTokenTTL time.Duration
	// Challenge is the WWW-Authenticate value of every 401.
	Challenge string
	// Scheme is the first bearer scheme word (for auth_header).
	Scheme string
	// Audit is true when the policy's enforcement is Audit: requests it
	// denies are forwarded with X-Keygate-Decision instead of refused.
	Audit bool
	// DummyDigest is compared against when a key ID is unknown, so unknown
	// key and wrong secret take the same time.
	DummyDigest []byte
	// Fingerprint is a SHA-256 prefix of the bundle document.
	Fingerprint string
	LoadedAt    time.Time

	schemes []string // lower-case bearer scheme words
	hmacs   *sync.Pool
	// keys are the compiled keys: one table for a v1 bundle, one per shard
	// (in the index's order) for a sharded one, where a key is in the table
	// bundle.ShardOf its key ID names. A shard's change swaps one table.
	keys     []keyTable
	keyCount int
	// keyLimit is the request limit of a key without its own: the policy's.
	keyLimit quota.Limit
}

// Key is a compiled ApiKey. A sidecar holds one per key of its policy (100,000
// at the most), so it is kept small: permissions shared between keys with the
// same list, digests inline, nothing the request path does not read.
type Key struct {
	KeyID   string
	Secrets []Secret
	// PermSet is shared by the keys of a shard that hold the same
	// permissions: never modify it.
	*PermSet
	CIDRs     []netip.Prefix
	Clients   map[string]*Client // nil without clients
	ExpiresAt *time.Time
	// limit is the key's own request limit; nil when it has the policy's
	// (Runtime.KeyLimit).
	limit *quota.Limit
}

// PermSet is a compiled permission list.
type PermSet struct {
	Perms    authz.Permissions
	PermList []string
	// PermHeader is PermList joined with commas (X-Keygate-Permissions).
	PermHeader string
}

// Secret is the digest of one of a key's secrets (bundle.SecretDigest).
type Secret struct {
	Digest    [sha256.Size]byte
	ExpiresAt *time.Time
}

// Client is a compiled sub-client; its permissions are already narrowed to
// what its key holds.
type Client struct {
	Key        string
	Perms      authz.Permissions
	PermList   []string
	PermHeader string
	// RateLimit is the client's own request limit; off when the client
	// shares its key's.
	RateLimit quota.Limit
}

// Key returns the compiled key of keyID, or nil. It neither locks nor
// allocates.
func (rt *Runtime) Key(keyID string) *Key {
	if len(rt.keys) == 1 {
		return rt.keys[0].find(keyID)
	}
	return rt.keys[bundle.ShardOf(keyID, len(rt.keys))].find(keyID)
}

// keyTable is the compiled keys of a shard (or of a v1 bundle) sorted by
// key ID, found by binary search: a shard of 1,600 keys takes 11 string
// comparisons, and the table costs nothing beyond the keys themselves (a
// map's slots were 3.3 MiB at 100,000 keys).
type keyTable []Key

// find returns the key of keyID, or nil.
func (t keyTable) find(keyID string) *Key {
	lo, hi := 0, len(t)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if t[m].KeyID < keyID {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(t) && t[lo].KeyID == keyID {
		return &t[lo]
	}
	return nil
}

// KeyCount is the number of keys in force.
func (rt *Runtime) KeyCount() int { return rt.keyCount }

// KeyLimit is the request limit of k: its own, else the policy's (off, not
// Valid, when neither sets one).
func (rt *Runtime) KeyLimit(k *Key) quota.Limit {
	if k.limit != nil {
		return *k.limit
	}
	return rt.keyLimit
}

// withKeys returns a copy of rt with the given key tables (one per shard).
func (rt *Runtime) withKeys(tables []keyTable) *Runtime {
	next := *rt
	next.keys, next.keyCount = tables, 0
	for _, t := range tables {
		next.keyCount += len(t)
	}
	return &next
}

// Usable reports whether the key works at now.
func (k *Key) Usable(now time.Time) bool {
	return k.ExpiresAt == nil || now.Before(*k.ExpiresAt)
}

// MAC returns an HMAC-SHA256 keyed with the hash key, reset, from a pool;
// give it back with PutMAC.
func (rt *Runtime) MAC() hash.Hash {
	if m, ok := rt.hmacs.Get().(hash.Hash); ok {
		m.Reset()
		return m
	}
	return hmac.New(sha256.New, rt.HashKey)
}

// PutMAC returns a MAC to the pool.
func (rt *Runtime) PutMAC(m hash.Hash) { rt.hmacs.Put(m) }

// BearerScheme reports whether word (case-insensitive) is a bearer scheme.
func (rt *Runtime) BearerScheme(word string) bool {
	for _, s := range rt.schemes {
		if len(s) == len(word) && strings.EqualFold(s, word) {
			return true
		}
	}
	return false
}

// Compile parses and compiles a bundle document.
func Compile(data []byte) (*Runtime, error) {
	b, err := bundle.Parse(data)
	if err != nil {
		return nil, err
	}
	rt, err := CompileBundle(b)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	rt.Fingerprint = fmt.Sprintf("%x", sum[:6])
	return rt, nil
}

// CompileBundle compiles a validated bundle, reporting every problem.
func CompileBundle(b *bundle.Bundle) (*Runtime, error) {
	var errs []error
	p := b.Policy
	rt := &Runtime{
		Policy:         p,
		HashKey:        append([]byte(nil), b.HashKey...),
		PublicPaths:    set(p.PublicPaths),
		TokenPaths:     set(p.TokenPaths),
		Grants:         set(p.Grants),
		Rules:          authz.CompileRules(p.Rules, p.DefaultAction),
		TokenTTL:       time.Duration(p.TokenTTLSeconds) * time.Second,
		ClientTokenTTL: time.Duration(p.ClientTokenTTLSeconds) * time.Second,
		LoadedAt:       time.Now(),
		Audit:          p.Enforcement == bundle.EnforcementAudit,
		hmacs:          &sync.Pool{},
		keyLimit:       Limit(p.RateLimit),
	}
	var err error
	if rt.PolicyCIDRs, err = clientaddr.ParsePrefixes(p.AllowedCIDRs); err != nil {
		errs = append(errs, fmt.Errorf("policy.allowedCIDRs: %w", err))
	}
	if rt.Resolver.Trusted, err = clientaddr.ParsePrefixes(p.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("policy.trustedProxies: %w", err))
	}
	for _, s := range p.BearerSchemes {
		if s == "" || strings.ContainsAny(s, " \t") || strings.EqualFold(s, "Basic") {
			errs = append(errs, fmt.Errorf("policy.bearerSchemes: %q is not a usable scheme word", s))
			continue
		}
		rt.schemes = append(rt.schemes, strings.ToLower(s))
	}
	if len(p.BearerSchemes) > 0 {
		rt.Scheme = p.BearerSchemes[0]
	}
	var ch []string
	if p.Basic {
		ch = append(ch, `Basic realm="keygate"`)
	}
	for _, s := range p.BearerSchemes {
		ch = append(ch, s+` realm="keygate"`)
	}
	rt.Challenge = strings.Join(ch, ", ")
	for _, tp := range p.TokenPaths {
		if !strings.HasPrefix(tp, "/") {
			errs = append(errs, fmt.Errorf("policy.tokenPaths: %q does not start with /", tp))
		}
	}
	if rt.Keyset, err = token.NewKeyset(b.SigningKeys, p.Issuer, p.Audience); err != nil {
		errs = append(errs, fmt.Errorf("signingKeys: %w", err))
	}
	keys, err := compileKeys(b.Keys)
	if err != nil {
		errs = append(errs, err)
	}
	rt.keys, rt.keyCount = []keyTable{keys}, len(keys)
	rt.DummyDigest = make([]byte, sha256.Size)
	_, _ = rand.Read(rt.DummyDigest)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rt, nil
}

// compileKeys compiles the key entries of a bundle (or of one shard),
// reporting every problem. The keys do not depend on the policy (a key
// without its own rate limit has the policy's through Runtime.KeyLimit), so
// a shard compiled once serves every index of its generation. Keys with the
// same permissions share one PermSet, and the keys are allocated together.
// Key IDs are unique (bundle.Parse and ParseShard refuse a document where
// one is not).
func compileKeys(keys []bundle.Key) (keyTable, error) {
	var errs []error
	slab := make(keyTable, len(keys))
	n := 0
	for _, k := range keys {
		n += len(k.Secrets)
	}
	secrets := make([]Secret, n)
	perms := map[string]*PermSet{}
	var err error
	for i, k := range keys {
		ck := &slab[i]
		ck.KeyID, ck.ExpiresAt = k.KeyID, k.ExpiresAt
		ck.Secrets, secrets = secrets[:len(k.Secrets):len(k.Secrets)], secrets[len(k.Secrets):]
		for j, s := range k.Secrets {
			if len(s.Digest) != sha256.Size {
				errs = append(errs, fmt.Errorf("keys %s: a digest is not HMAC-SHA256", k.KeyID))
			}
			copy(ck.Secrets[j].Digest[:], s.Digest)
			ck.Secrets[j].ExpiresAt = s.ExpiresAt
		}
		if k.RateLimit != nil {
			l := Limit(k.RateLimit)
			ck.limit = &l
		}
		name := strings.Join(k.Permissions, "\x00")
		if ck.PermSet = perms[name]; ck.PermSet == nil {
			ps := &PermSet{Perms: authz.NewPermissions(k.Permissions)}
			ps.PermList = ps.Perms.List()
			ps.PermHeader = strings.Join(ps.PermList, ",")
			perms[name], ck.PermSet = ps, ps
		}
		if ck.CIDRs, err = clientaddr.ParsePrefixes(k.AllowedCIDRs); err != nil {
			errs = append(errs, fmt.Errorf("keys %s allowedCIDRs: %w", k.KeyID, err))
		}
		if len(k.Clients) > 0 {
			ck.Clients = make(map[string]*Client, len(k.Clients))
		}
		for _, c := range k.Clients {
			if c.Key == "" {
				errs = append(errs, fmt.Errorf("keys %s: a client has no key", k.KeyID))
				continue
			}
			list := ck.Perms.Restrict(c.Permissions)
			ck.Clients[c.Key] = &Client{Key: c.Key, Perms: authz.NewPermissions(list), PermList: list, PermHeader: strings.Join(list, ","),
				RateLimit: Limit(c.RateLimit)}
		}
	}
	slices.SortFunc(slab, func(a, b Key) int { return strings.Compare(a.KeyID, b.KeyID) })
	return slab, errors.Join(errs...)
}

// Limit is the quota form of a bundle rate limit; nil is the zero (off) limit.
func Limit(l *bundle.RateLimit) quota.Limit {
	if l == nil {
		return quota.Limit{}
	}
	return quota.Limit{Requests: l.Requests, Per: time.Duration(l.PerMillis) * time.Millisecond, Burst: l.Burst}
}

func set(list []string) map[string]bool {
	m := make(map[string]bool, len(list))
	for _, s := range list {
		m[s] = true
	}
	return m
}

// Store holds the runtime in force. Reads are lock-free.
type Store struct {
	cur       atomic.Pointer[Runtime]
	mu        sync.Mutex
	lastErr   error
	staleErr  error
	staleFrom time.Time
	onChange  []func(*Runtime)
}

// Load returns the runtime in force, or nil before the first bundle.
func (s *Store) Load() *Runtime { return s.cur.Load() }

// OnChange registers fn to run after each new runtime is installed.
func (s *Store) OnChange(fn func(*Runtime)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChange = append(s.onChange, fn)
}

// Update compiles data and installs it; on error the last good runtime stays.
func (s *Store) Update(data []byte) (*Runtime, error) {
	rt, err := Compile(data)
	if err != nil {
		s.mu.Lock()
		s.lastErr = err
		s.mu.Unlock()
		return nil, err
	}
	return s.Install(rt), nil
}

// Install puts rt in force, unless the runtime in force has the same
// Fingerprint, and returns the runtime in force.
func (s *Store) Install(rt *Runtime) *Runtime {
	s.mu.Lock()
	if cur := s.cur.Load(); cur != nil && cur.Fingerprint == rt.Fingerprint {
		s.lastErr = nil
		s.mu.Unlock()
		return cur
	}
	s.lastErr = nil
	s.cur.Store(rt)
	fns := append([]func(*Runtime){}, s.onChange...)
	s.mu.Unlock()
	for _, fn := range fns {
		fn(rt)
	}
	return rt
}

// Reject records a bundle that could not be used; the runtime in force stays.
func (s *Store) Reject(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
}

// SetSourceHealth records whether the source (API server, file) is reachable.
func (s *Store) SetSourceHealth(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.staleErr = nil
		return
	}
	if s.staleErr == nil {
		s.staleFrom = time.Now()
	}
	s.staleErr = err
}

// Status describes the store for /readyz.
type Status struct {
	Loaded      bool
	Fingerprint string
	Age         time.Duration
	LastError   error
	Stale       error
	StaleSince  time.Time
}

// Status returns the current status.
func (s *Store) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{LastError: s.lastErr, Stale: s.staleErr, StaleSince: s.staleFrom}
	if rt := s.cur.Load(); rt != nil {
		st.Loaded, st.Fingerprint, st.Age = true, rt.Fingerprint, time.Since(rt.LoadedAt)
	}
	return st
}
