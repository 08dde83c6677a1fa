// Package authn authenticates requests: HTTP Basic key:secret (RFC 7617),
// bearer JWTs under the policy's scheme words, and the optional API-key
// header. Secrets are checked as keyed digests in constant time; an unknown
// key ID costs the same as a wrong secret.
package authn

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/keygate-dev/keygate/sidecar/authz"
	"github.com/keygate-dev/keygate/sidecar/clientaddr"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/token"
)

// ClientKeyHeader names the acting client in API-key-header mode.
const ClientKeyHeader = "X-Keygate-Client-Key"

// Reasons an authentication fails. They go to metrics and logs, never to the
// client, which sees one generic 401.
const (
	ReasonNoCredentials = "no_credentials"
	ReasonMalformed     = "malformed"
	ReasonUnknownKey    = "unknown_key"
	ReasonBadSecret     = "bad_secret"
	ReasonKeyExpired    = "key_expired"
	ReasonBadToken      = "bad_token"
	ReasonRevoked       = "revoked"
	ReasonUnknownClient = "unknown_client"
	ReasonCIDR          = "cidr"
	ReasonScheme        = "scheme_disabled"
)

// Via says how a caller authenticated.
const (
	ViaBasic  = "basic"
	ViaBearer = "bearer"
	ViaAPIKey = "api_key"
)

// Identity is an authenticated caller.
type Identity struct {
	KeyID      string
	Client     string
	Via        string
	Perms      authz.Permissions
	PermHeader string
	// KeyCIDRs are the key's allowed blocks, TokenCIDRs the token's own.
	KeyCIDRs   []netip.Prefix
	TokenCIDRs []netip.Prefix
	// Claims are set for bearer callers.
	Claims *token.Claims
	Raw    string
	Key    *config.Key
}

// Error is an authentication failure.
type Error struct {
	Reason string
	// KeyID is the key ID the caller claimed, if any (for failure limits).
	KeyID string
}

func (e *Error) Error() string { return "authentication failed: " + e.Reason }

// fail returns a failure; keyID is copied, as it may alias the request's
// buffers or a scratch buffer cleared after the check, and the failure
// limits keep it.
func fail(reason, keyID string) *Error {
	return &Error{Reason: reason, KeyID: strings.Clone(keyID)}
}

// Credentials are a parsed Authorization header.
type Credentials struct {
	Basic    bool
	User     string
	Password string
	Scheme   string
	Token    string
}

// ErrMalformed is returned for any unparseable Authorization value.
var ErrMalformed = errors.New("malformed Authorization header")

// ParseAuthorization parses one Authorization value. isBearer says whether a
// scheme word (other than Basic) is one of the policy's bearer schemes.
// Basic requires valid base64 of "user:password" with both parts non-empty;
// the password may hold colons.
func ParseAuthorization(h string, isBearer func(string) bool) (Credentials, error) {
	sc := getScratch()
	defer putScratch(sc)
	c, err := parseAuthorization(h, isBearer, sc)
	if c.Basic {
		// Copied out of the scratch buffer, which is cleared.
		user := c.User + ":" + c.Password
		c.User, c.Password = user[:len(c.User)], user[len(c.User)+1:]
	}
	return c, err
}

// parseAuthorization is ParseAuthorization with Basic's user and password
// decoded into sc.out: they alias it, so they are valid (and the secret
// lies in memory) only until sc is returned to the pool, which clears it.
func parseAuthorization(h string, isBearer func(string) bool, sc *scratch) (Credentials, error) {
	sp := strings.IndexByte(h, ' ')
	if sp <= 0 {
		return Credentials{}, ErrMalformed
	}
	scheme, rest := h[:sp], strings.TrimLeft(h[sp+1:], " ")
	if rest == "" || strings.ContainsAny(rest, " \t\r\n") {
		return Credentials{}, ErrMalformed
	}
	if strings.EqualFold(scheme, "Basic") {
		if len(rest) > 4096 {
			return Credentials{}, ErrMalformed
		}
		sc.in = append(sc.in[:0], rest...)
		sc.out = slicesGrow(sc.out[:0], base64.StdEncoding.DecodedLen(len(rest)))
		n, err := strictBase64.Decode(sc.out, sc.in)
		if err != nil {
			return Credentials{}, ErrMalformed
		}
		i := bytes.IndexByte(sc.out[:n], ':')
		if i <= 0 || i == n-1 {
			return Credentials{}, ErrMalformed
		}
		return Credentials{Basic: true, Scheme: scheme, User: alias(sc.out[:i]), Password: alias(sc.out[i+1 : n])}, nil
	}
	if isBearer == nil || !isBearer(scheme) {
		return Credentials{}, ErrMalformed
	}
	if len(rest) > token.MaxSize {
		return Credentials{}, ErrMalformed
	}
	return Credentials{Scheme: scheme, Token: rest}, nil
}

var strictBase64 = base64.StdEncoding.Strict()

// alias returns b's bytes as a string without copying: the caller must not
// use it once b changes (here: once the scratch buffer is cleared).
func alias(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b)) //nolint:gosec // G103: valid only while the scratch is held; see parseAuthorization
}

// scratch holds the bytes of one credential check, pooled so that checking
// a secret allocates nothing; the copies are cleared before reuse.
type scratch struct {
	in, out []byte
	sum     [sha256.Size]byte
}

var scratchPool = sync.Pool{New: func() any { return &scratch{} }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(sc *scratch) {
	clear(sc.in[:cap(sc.in)])
	clear(sc.out[:cap(sc.out)])
	clear(sc.sum[:])
	scratchPool.Put(sc)
}

func slicesGrow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// Authenticator authenticates requests against the runtime in force.
type Authenticator struct {
	Revoked *revocation.Set
	// CacheSize bounds the verified-token cache and the key-identity cache
	// (entries each); default 10000.
	CacheSize int

	cache atomic.Pointer[tokenCache]
}

// CheckSecret authenticates keyID and secret. Unknown key and wrong secret
// take the same work: one HMAC and comparisons against two digests.
func CheckSecret(rt *config.Runtime, keyID, secret string, now time.Time) (*config.Key, *Error) {
	sc := getScratch()
	defer putScratch(sc)
	m := rt.MAC()
	sc.in = append(sc.in[:0], secret...)
	_, _ = m.Write(sc.in)
	sum := m.Sum(sc.sum[:0])
	rt.PutMAC(m)
	k := rt.Key(keyID)
	d0, d1 := rt.DummyDigest, rt.DummyDigest
	var e0, e1 *time.Time
	if k != nil {
		d0, e0 = k.Secrets[0].Digest[:], k.Secrets[0].ExpiresAt
		if len(k.Secrets) > 1 {
			d1, e1 = k.Secrets[1].Digest[:], k.Secrets[1].ExpiresAt
		}
	}
	ok0 := hmac.Equal(sum, d0) && (e0 == nil || now.Before(*e0))
	ok1 := hmac.Equal(sum, d1) && (e1 == nil || now.Before(*e1))
	if k != nil && len(k.Secrets) > 2 && !ok0 && !ok1 {
		for _, s := range k.Secrets[2:] {
			if hmac.Equal(sum, s.Digest[:]) && (s.ExpiresAt == nil || now.Before(*s.ExpiresAt)) {
				ok1 = true
			}
		}
	}
	if k == nil {
		return nil, fail(ReasonUnknownKey, keyID)
	}
	if !ok0 && !ok1 || len(k.Secrets) == 1 && ok1 {
		return nil, fail(ReasonBadSecret, keyID)
	}
	if !k.Usable(now) {
		return nil, fail(ReasonKeyExpired, keyID)
	}
	return k, nil
}

// KeyIdentity is the identity of a key (or one of its clients) that
// authenticated with its secret.
func KeyIdentity(k *config.Key, client, via string) (*Identity, *Error) {
	id := &Identity{KeyID: k.KeyID, Via: via, Perms: k.Perms, PermHeader: k.PermHeader, KeyCIDRs: k.CIDRs, Key: k}
	if client != "" {
		c := k.Clients[client]
		if c == nil {
			return nil, fail(ReasonUnknownClient, k.KeyID)
		}
		id.Client, id.Perms, id.PermHeader = c.Key, c.Perms, c.PermHeader
	}
	return id, nil
}

// Request authenticates r. Exactly one credential must be presented.
func (a *Authenticator) Request(rt *config.Runtime, r *http.Request, now time.Time) (*Identity, *Error) {
	authz := r.Header["Authorization"]
	var apiKey []string
	if rt.Policy.APIKeyHeader != "" {
		apiKey = r.Header.Values(rt.Policy.APIKeyHeader)
	}
	switch {
	case len(authz)+len(apiKey) == 0:
		return nil, fail(ReasonNoCredentials, "")
	case len(authz)+len(apiKey) > 1:
		return nil, fail(ReasonMalformed, "")
	case len(apiKey) == 1:
		keyID, secret, ok := strings.Cut(apiKey[0], ":")
		if !ok || keyID == "" || secret == "" {
			return nil, fail(ReasonMalformed, "")
		}
		clients := r.Header.Values(ClientKeyHeader)
		if len(clients) > 1 {
			return nil, fail(ReasonMalformed, keyID)
		}
		k, err := CheckSecret(rt, keyID, secret, now)
		if err != nil {
			return nil, err
		}
		client := ""
		if len(clients) == 1 {
			client = clients[0]
		}
		return a.keyIdentity(rt, k, client, ViaAPIKey)
	}
	// Basic's decoded key ID and secret live in sc until the check is done
	// and are cleared with it.
	sc := getScratch()
	defer putScratch(sc)
	cred, err := parseAuthorization(authz[0], rt.BearerScheme, sc)
	if err != nil {
		return nil, fail(ReasonMalformed, "")
	}
	if cred.Basic {
		if !rt.Policy.Basic {
			return nil, fail(ReasonScheme, "")
		}
		k, ferr := CheckSecret(rt, cred.User, cred.Password, now)
		if ferr != nil {
			return nil, ferr
		}
		return a.keyIdentity(rt, k, "", ViaBasic)
	}
	return a.Bearer(rt, cred.Token, now)
}

// identKey names a key identity: the key, the acting client, how it
// authenticated.
type identKey struct {
	k           *config.Key
	client, via string
}

// keyIdentity is KeyIdentity, built once per key, client and way of
// authenticating for the runtime in force and shared after: an Identity is
// never modified once returned.
func (a *Authenticator) keyIdentity(rt *config.Runtime, k *config.Key, client, via string) (*Identity, *Error) {
	c := a.cacheFor(rt)
	ik := identKey{k: k, client: client, via: via}
	c.idMu.RLock()
	id := c.ids[ik]
	c.idMu.RUnlock()
	if id != nil {
		return id, nil
	}
	id, ferr := KeyIdentity(k, client, via)
	if ferr != nil {
		return nil, ferr
	}
	// The map keeps the bundle's client name, not the request's bytes. It
	// is bounded like the token cache: past that, identities are built per
	// request (a policy can hold 100,000 keys).
	ik.client = id.Client
	c.idMu.Lock()
	if len(c.ids) < a.cacheSize() {
		c.ids[ik] = id
	}
	c.idMu.Unlock()
	return id, nil
}

func (a *Authenticator) cacheSize() int {
	if a.CacheSize <= 0 {
		return 10000
	}
	return a.CacheSize
}

// CheckAddress applies the policy's, the key's and the token's CIDR lists.
func CheckAddress(rt *config.Runtime, id *Identity, addr netip.Addr) *Error {
	if !clientaddr.Allowed(addr, rt.PolicyCIDRs, id.KeyCIDRs, id.TokenCIDRs) {
		return fail(ReasonCIDR, id.KeyID)
	}
	return nil
}

// tokenHash is SHA-256 of a token without allocating: the cache key, so the
// cache holds 32 bytes per token, not the token.
func tokenHash(raw string) [32]byte {
	sc := getScratch()
	defer putScratch(sc)
	sc.in = append(sc.in[:0], raw...)
	return sha256.Sum256(sc.in)
}

type cached struct {
	id  *Identity
	exp time.Time
	nbf time.Time
	// retires is when the signing key retires (nil: the current key).
	retires *time.Time
}

// tokenCache holds, for one runtime, the verified tokens and the key
// identities built.
type tokenCache struct {
	rt *config.Runtime
	mu sync.RWMutex
	m  map[[32]byte]cached

	idMu sync.RWMutex
	ids  map[identKey]*Identity
}

func (a *Authenticator) cacheFor(rt *config.Runtime) *tokenCache {
	for {
		c := a.cache.Load()
		if c != nil && c.rt == rt {
			return c
		}
		n := &tokenCache{rt: rt, m: make(map[[32]byte]cached), ids: make(map[identKey]*Identity)}
		if a.cache.CompareAndSwap(c, n) {
			return n
		}
	}
}

// Bearer authenticates a bearer token: a cache lookup on the hot path, full
// verification (signature, claims, key and client still in the bundle) on a
// miss. Revocation is checked on every use.
func (a *Authenticator) Bearer(rt *config.Runtime, raw string, now time.Time) (*Identity, *Error) {
	if len(raw) > token.MaxSize {
		return nil, fail(ReasonBadToken, "")
	}
	h := tokenHash(raw)
	c := a.cacheFor(rt)
	c.mu.RLock()
	e, ok := c.m[h]
	c.mu.RUnlock()
	if ok {
		if now.After(e.exp.Add(token.Leeway)) || now.Add(token.Leeway).Before(e.nbf) ||
			e.retires != nil && !now.Before(*e.retires) {
			return nil, fail(ReasonBadToken, e.id.KeyID)
		}
		if a.Revoked != nil && a.Revoked.Revoked(e.id.Claims.ID) {
			return nil, fail(ReasonRevoked, e.id.KeyID)
		}
		if !e.id.Key.Usable(now) {
			return nil, fail(ReasonKeyExpired, e.id.KeyID)
		}
		return e.id, nil
	}
	claims, err := rt.Keyset.Verify(raw, now)
	if err != nil {
		return nil, fail(ReasonBadToken, "")
	}
	if a.Revoked != nil && a.Revoked.Revoked(claims.ID) {
		return nil, fail(ReasonRevoked, claims.Subject)
	}
	id, ferr := TokenIdentity(rt, claims, now)
	if ferr != nil {
		return nil, ferr
	}
	// The cache keeps the identity: its token must not alias the request.
	id.Raw = strings.Clone(raw)
	e = cached{id: id, exp: claims.Expiry.Time(), retires: claims.KeyRetiresAt()}
	if claims.NotBefore != nil {
		e.nbf = claims.NotBefore.Time()
	}
	size := a.cacheSize()
	c.mu.Lock()
	if len(c.m) >= size {
		for k, v := range c.m {
			if now.After(v.exp.Add(token.Leeway)) || len(c.m) >= size*3/4 {
				delete(c.m, k)
			}
		}
	}
	c.m[h] = e
	c.mu.Unlock()
	return id, nil
}

// TokenIdentity builds the identity of verified claims against the bundle in
// force: the key must still be there and usable, a client still one of its
// clients; permissions are what the token carries and its key (or client)
// still holds.
func TokenIdentity(rt *config.Runtime, c *token.Claims, now time.Time) (*Identity, *Error) {
	k := rt.Key(c.Subject)
	if k == nil {
		return nil, fail(ReasonUnknownKey, c.Subject)
	}
	if !k.Usable(now) {
		return nil, fail(ReasonKeyExpired, c.Subject)
	}
	holder := k.Perms
	if c.Client != "" {
		cl := k.Clients[c.Client]
		if cl == nil {
			return nil, fail(ReasonUnknownClient, c.Subject)
		}
		holder = cl.Perms
	}
	list := holder.Restrict(c.Perms)
	cidrs, err := clientaddr.ParsePrefixes(c.CIDRs)
	if err != nil {
		return nil, fail(ReasonBadToken, c.Subject)
	}
	if len(c.CIDRs) > 0 && len(cidrs) == 0 {
		return nil, fail(ReasonBadToken, c.Subject)
	}
	return &Identity{
		KeyID: k.KeyID, Client: c.Client, Via: ViaBearer,
		Perms: authz.NewPermissions(list), PermHeader: strings.Join(list, ","),
		KeyCIDRs: k.CIDRs, TokenCIDRs: cidrs, Claims: c, Key: k,
	}, nil
}
