package config

import (
	"testing"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

func FuzzCompile(f *testing.F) {
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgES256, bundle.AlgHS256} {
		fx := bundletest.New(alg)
		fx.Bundle.Policy.Rules = []bundle.Rule{{Methods: []string{"GET"}, Paths: []string{"/charges", "/charges/*"}, Permission: "charges:List"}}
		fx.Bundle.Policy.TrustedProxies = []string{"10.0.0.0/8"}
		fx.AddKey("apk-1", []string{"charges:List"}, bundletest.WithCIDRs("185.184.111.39/32"), bundletest.WithClient("acme", "charges:List"))
		f.Add(fx.JSON())
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":"keygate.dev/bundle/v1","extra":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rt, err := Compile(data)
		if err != nil {
			return
		}
		if rt.Keyset == nil || rt.Rules == nil || len(rt.HashKey) < 32 {
			t.Fatalf("compiled an incomplete runtime")
		}
	})
}

func TestCompileRejectsWhole(t *testing.T) {
	fx := bundletest.New(bundle.AlgEdDSA)
	fx.AddKey("apk-1", nil)
	good := fx.JSON()
	if _, err := Compile(good); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*bundle.Bundle){
		"bad scheme word":      func(b *bundle.Bundle) { b.Policy.BearerSchemes = []string{"Basic"} },
		"bad token path":       func(b *bundle.Bundle) { b.Policy.TokenPaths = []string{"token"} },
		"signing key mismatch": func(b *bundle.Bundle) { b.SigningKeys[0].Algorithm = bundle.AlgRS256 },
	} {
		t.Run(name, func(t *testing.T) {
			c := *fx
			b := fx.Bundle
			b.SigningKeys = append([]bundle.SigningKey{}, fx.Bundle.SigningKeys...)
			mut(&b)
			c.Bundle = b
			data, err := bundleJSON(&c.Bundle)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Compile(data); err == nil {
				t.Fatal("accepted")
			}
			s := &Store{}
			if _, err := s.Update(good); err != nil {
				t.Fatal(err)
			}
			before := s.Load()
			if _, err := s.Update(data); err == nil || s.Load() != before {
				t.Fatal("a bad bundle replaced the good one")
			}
		})
	}
}

func bundleJSON(b *bundle.Bundle) ([]byte, error) { return bundle.Marshal(b) }
