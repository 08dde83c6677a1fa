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
	Keys           map[string]*Key
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
	hmacs   sync.Pool
}

// Key is a compiled ApiKey.
type Key struct {
	KeyID    string
	Name     string
	Secrets  []bundle.SecretDigest
	Perms    authz.Permissions
	PermList []string
	// PermHeader is PermList joined with commas (X-Keygate-Permissions).
	PermHeader string
	CIDRs      []netip.Prefix
	Clients    map[string]*Client
	ExpiresAt  *time.Time
	// RateLimit is the key's request limit: its own, else the policy's
	// (invalid, that is off, when neither sets one).
	RateLimit quota.Limit
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
	keys, err := compileKeys(p, b.Keys)
	if err != nil {
		errs = append(errs, err)
	}
	rt.Keys = keys
	rt.DummyDigest = make([]byte, sha256.Size)
	_, _ = rand.Read(rt.DummyDigest)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rt, nil
}

// compileKeys compiles the key entries of a bundle (or of one shard) of
// policy p, reporting every problem.
func compileKeys(p bundle.Policy, keys []bundle.Key) (map[string]*Key, error) {
	var errs []error
	out := make(map[string]*Key, len(keys))
	var err error
	for _, k := range keys {
		ck := &Key{KeyID: k.KeyID, Name: k.Name, Secrets: k.Secrets, Perms: authz.NewPermissions(k.Permissions), ExpiresAt: k.ExpiresAt}
		ck.RateLimit = Limit(k.RateLimit)
		if k.RateLimit == nil {
			ck.RateLimit = Limit(p.RateLimit)
		}
		ck.PermList = ck.Perms.List()
		ck.PermHeader = strings.Join(ck.PermList, ",")
		if ck.CIDRs, err = clientaddr.ParsePrefixes(k.AllowedCIDRs); err != nil {
			errs = append(errs, fmt.Errorf("keys %s allowedCIDRs: %w", k.KeyID, err))
		}
		ck.Clients = make(map[string]*Client, len(k.Clients))
		for _, c := range k.Clients {
			if c.Key == "" {
				errs = append(errs, fmt.Errorf("keys %s: a client has no key", k.KeyID))
				continue
			}
			list := ck.Perms.Restrict(c.Permissions)
			ck.Clients[c.Key] = &Client{Key: c.Key, Perms: authz.NewPermissions(list), PermList: list, PermHeader: strings.Join(list, ","),
				RateLimit: Limit(c.RateLimit)}
		}
		out[k.KeyID] = ck
	}
	return out, errors.Join(errs...)
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
