package authn

import (
	"net/http"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/token"
)

func runtimeFor(b testing.TB) (*config.Runtime, *bundletest.Fixture) {
	f := bundletest.New(bundle.AlgEdDSA)
	f.AddKey("apk-1", []string{"charges:List"})
	rt, err := config.Compile(f.JSON())
	if err != nil {
		b.Fatal(err)
	}
	return rt, f
}

// BenchmarkBasic is the hot path of a Basic request: parse, HMAC, compare.
func BenchmarkBasic(b *testing.B) {
	rt, f := runtimeFor(b)
	a := &Authenticator{Revoked: revocation.NewSet()}
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth("apk-1", f.Secrets["apk-1"])
	now := time.Now()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := a.Request(rt, r, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBearerCached is the hot path of a bearer request seen before.
func BenchmarkBearerCached(b *testing.B) {
	rt, _ := runtimeFor(b)
	a := &Authenticator{Revoked: revocation.NewSet()}
	raw, _, _ := rt.Keyset.Issue(token.Spec{Subject: "apk-1", Perms: []string{"charges:List"}, TTL: time.Hour}, time.Now())
	r, _ := http.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+raw)
	now := time.Now()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := a.Request(rt, r, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBearerUncached is the first use of a token: full verification and
// the identity built and cached.
func BenchmarkBearerUncached(b *testing.B) {
	rt, _ := runtimeFor(b)
	a := &Authenticator{Revoked: revocation.NewSet()}
	now := time.Now()
	toks := make([]string, 4096)
	for i := range toks {
		toks[i], _, _ = rt.Keyset.Issue(token.Spec{Subject: "apk-1", Perms: []string{"charges:List"}, TTL: time.Hour}, now)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(toks) {
			b.StopTimer()
			a = &Authenticator{Revoked: revocation.NewSet()}
			i = 0
			b.StartTimer()
		}
		if _, err := a.Bearer(rt, toks[i], now); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
