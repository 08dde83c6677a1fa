package authn

import (
	"encoding/base64"
	"net/http"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
)

// TestFailureKeyIDOutlivesScratch: Basic credentials are decoded into a
// pooled buffer cleared after the check; the key ID a failure reports (kept
// by the failure limits) must be a copy.
func TestFailureKeyIDOutlivesScratch(t *testing.T) {
	rt, f := runtimeFor(t)
	a := &Authenticator{Revoked: revocation.NewSet()}
	for _, c := range []struct{ user, secret, reason string }{
		{"ghost-key", "whatever", ReasonUnknownKey},
		{"apk-1", "wrong-secret", ReasonBadSecret},
	} {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(c.user, c.secret)
		// Other checks reuse (and clear) the pooled buffers meanwhile.
		_, ferr := a.Request(rt, r, time.Now())
		for range 3 {
			ok, _ := http.NewRequest("GET", "/", nil)
			ok.SetBasicAuth("apk-1", f.Secrets["apk-1"])
			if _, err := a.Request(rt, ok, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		if ferr == nil || ferr.Reason != c.reason || ferr.KeyID != c.user {
			t.Fatalf("%s: failure %+v, want reason %s and key ID %q", c.user, ferr, c.reason, c.user)
		}
	}
	cred, err := ParseAuthorization("Basic "+base64.StdEncoding.EncodeToString([]byte("apk-1:s:e:cret")), nil)
	if err != nil || cred.User != "apk-1" || cred.Password != "s:e:cret" {
		t.Fatalf("ParseAuthorization: %+v %v", cred, err)
	}
}

// TestKeyIdentityShared: a key's identity is built once per runtime and
// shared by its requests; a new bundle builds it again from the new key.
func TestKeyIdentityShared(t *testing.T) {
	_, f := runtimeFor(t)
	f.AddKey("apk-2", []string{"charges:List"}, bundletest.WithClient("cli-1", "charges:List"))
	f.Bundle.Policy.APIKeyHeader = "X-Api-Key"
	rt, err := config.Compile(f.JSON())
	if err != nil {
		t.Fatal(err)
	}
	a := &Authenticator{Revoked: revocation.NewSet()}
	basicReq := func(user string) *http.Request {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(user, f.Secrets[user])
		return r
	}
	id1, ferr := a.Request(rt, basicReq("apk-1"), time.Now())
	if ferr != nil {
		t.Fatal(ferr)
	}
	id2, _ := a.Request(rt, basicReq("apk-1"), time.Now())
	if id1 != id2 || id1.KeyID != "apk-1" || id1.Via != ViaBasic || id1.Key != rt.Key("apk-1") {
		t.Fatalf("identities %p %+v and %p", id1, id1, id2)
	}
	other, _ := a.Request(rt, basicReq("apk-2"), time.Now())
	if other == nil || other == id1 || other.KeyID != "apk-2" {
		t.Fatalf("apk-2's identity: %+v", other)
	}
	// The API-key header with a client: its own identity.
	r, _ := http.NewRequest("GET", "/", nil)
	r.Header.Set("X-Api-Key", "apk-2:"+f.Secrets["apk-2"])
	r.Header.Set(ClientKeyHeader, "cli-1")
	cl, ferr := a.Request(rt, r, time.Now())
	if ferr != nil || cl.Client != "cli-1" || cl.Via != ViaAPIKey || cl == other {
		t.Fatalf("client identity %+v %v", cl, ferr)
	}

	f.Bundle.Keys[0].Permissions = []string{"charges:Read"}
	rt2, err := config.Compile(f.JSON())
	if err != nil {
		t.Fatal(err)
	}
	id3, ferr := a.Request(rt2, basicReq("apk-1"), time.Now())
	if ferr != nil {
		t.Fatal(ferr)
	}
	if id3 == id1 || id3.Key != rt2.Key("apk-1") || id3.PermHeader == id1.PermHeader {
		t.Fatalf("identity after a new bundle: %+v (before %+v)", id3, id1)
	}
}

// TestKeyIdentityCacheBounded: past CacheSize key identities, the rest are
// built per request (correct, just not shared).
func TestKeyIdentityCacheBounded(t *testing.T) {
	_, f := runtimeFor(t)
	f.AddKey("apk-2", []string{"charges:List"})
	rt, err := config.Compile(f.JSON())
	if err != nil {
		t.Fatal(err)
	}
	a := &Authenticator{Revoked: revocation.NewSet(), CacheSize: 1}
	get := func(user string) *Identity {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(user, f.Secrets[user])
		id, ferr := a.Request(rt, r, time.Now())
		if ferr != nil || id.KeyID != user {
			t.Fatalf("%s: %+v %v", user, id, ferr)
		}
		return id
	}
	if first, again := get("apk-1"), get("apk-1"); first != again {
		t.Fatal("the first key's identity is not shared")
	}
	if second, again := get("apk-2"), get("apk-2"); second == again {
		t.Fatal("a second identity was cached past CacheSize 1")
	}
	if n := len(a.cacheFor(rt).ids); n != 1 {
		t.Fatalf("%d identities cached, want 1", n)
	}
}
