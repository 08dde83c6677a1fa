package seeds

import (
	"net/url"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

// Sendforsign (000, 001): platform tokens from {apiKey, secret}, client tokens,
// revoking both, and the testing mode with the key in a header.
func TestSendforsign(t *testing.T) {
	f := bundletest.New(bundle.AlgEdDSA)
	p := &f.Bundle.Policy
	p.TokenPaths = []string{"/api/token"}
	p.Grants = []string{"api_key", "client_token"}
	p.APIKeyHeader = "X-Sendforsign-Key"
	p.DefaultAction = "Authenticated"
	f.AddKey("apk-platform", []string{"contracts:All"}, bundletest.WithClient("client-42", "contracts:All"))
	s := start(t, f)
	json := "application/json"

	// Creating platform tokens: no authentication header.
	r := s.call("POST", "/api/token", `{"apiKey":"apk-platform","secret":"`+f.Secrets["apk-platform"]+`"}`, "Content-Type", json)
	want(t, r, 201)
	platform := r.json(t)["access_token"].(string)
	if r.json(t)["expires_in"].(float64) != 3600 || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("token response %s %v", r.Body, r.Header)
	}
	seen := s.call("POST", "/api/contract", `{"contract":{}}`, "Authorization", "Bearer "+platform, "Content-Type", json).upstream(t)
	if seen.Headers["X-Keygate-Key-Id"][0] != "apk-platform" || seen.Headers["Authorization"] != nil {
		t.Fatalf("upstream saw %v", seen.Headers)
	}

	// Creating client tokens: clientKey plus the platform bearer.
	r = s.call("POST", "/api/token", `{"clientKey":"client-42"}`, "Content-Type", json, "Authorization", "Bearer "+platform)
	want(t, r, 201)
	client := r.json(t)["access_token"].(string)
	seen = s.call("POST", "/api/contract", `{}`, "Authorization", "Bearer "+client).upstream(t)
	if seen.Headers["X-Keygate-Client"][0] != "client-42" {
		t.Fatalf("upstream saw %v", seen.Headers)
	}

	// Revoking client tokens.
	want(t, s.call("POST", "/api/token", `{"action":"revoke","access_token":"`+client+`"}`, "Content-Type", json, "Authorization", "Bearer "+platform), 201)
	want401(t, s.call("POST", "/api/contract", `{}`, "Authorization", "Bearer "+client))

	// Testing mode: API key in the header, client key alongside.
	seen = s.call("POST", "/api/contract", `{"clientKey":"client-42"}`, "X-Sendforsign-Key", "apk-platform:"+f.Secrets["apk-platform"],
		"X-Keygate-Client-Key", "client-42").upstream(t)
	if seen.Headers["X-Keygate-Client"][0] != "client-42" || seen.Headers["X-Sendforsign-Key"] != nil {
		t.Fatalf("testing mode: upstream saw %v", seen.Headers)
	}
	want(t, s.call("POST", "/api/token", `{"clientKey":"client-42"}`, "Content-Type", json, "X-Sendforsign-Key", "apk-platform:"+f.Secrets["apk-platform"]), 201)

	// Revoking platform tokens: the bearer's own token.
	want(t, s.call("POST", "/api/token", `{"action":"revoke"}`, "Content-Type", json, "Authorization", "Bearer "+platform), 201)
	want401(t, s.call("POST", "/api/contract", `{}`, "Authorization", "Bearer "+platform))

	// The revocations survive a restart (persisted in --revocations-file).
	s.restart()
	want401(t, s.call("POST", "/api/contract", `{}`, "Authorization", "Bearer "+platform))
	want401(t, s.call("POST", "/api/contract", `{}`, "Authorization", "Bearer "+client))
}

// Silverflow (002): Basic key:secret, permissions named in 403s, CIDR
// restrictions on keys and tokens (generic 401), bearer tokens for third
// parties, rotation by editing keys.
func TestSilverflow(t *testing.T) {
	f := bundletest.New(bundle.AlgES256)
	p := &f.Bundle.Policy
	p.Rules = []bundle.Rule{
		{Methods: []string{"GET"}, Paths: []string{"/charges", "/charges/*"}, Permission: "charges:List"},
		{Methods: []string{"POST"}, Paths: []string{"/charges"}, Permission: "charges:Create"},
		{Paths: []string{"/reports", "/reports/*"}, Permission: "reports:Get"},
	}
	f.AddKey("apk-1wtRxni5IsPsSpBLWpwr", []string{"charges:List", "reports:All"})
	f.AddKey("apk-restricted", []string{"charges:List"}, bundletest.WithCIDRs("185.184.111.39/32", "102.177.115.120/29"))
	s := start(t, f)
	lake := basic("apk-1wtRxni5IsPsSpBLWpwr", f.Secrets["apk-1wtRxni5IsPsSpBLWpwr"])

	want(t, s.call("GET", "/charges", "", "Authorization", lake), 200)
	want(t, s.call("GET", "/reports/daily", "", "Authorization", lake), 200)
	r := s.call("POST", "/charges", `{}`, "Authorization", lake)
	want(t, r, 403)
	if m := r.json(t); m["permission"] != "charges:Create" || m["message"] != "missing permission charges:Create" {
		t.Fatalf("403 body %s", r.Body)
	}
	// IP restrictions: a key limited to other ranges yields the generic 401.
	want401(t, s.call("GET", "/charges", "", "Authorization", basic("apk-restricted", f.Secrets["apk-restricted"])))
	want401(t, s.call("GET", "/charges", "", "Authorization", basic("apk-1wtRxni5IsPsSpBLWpwr", "wrong")))

	// Bearer tokens for third parties, narrowed in permissions and addresses.
	form := "application/x-www-form-urlencoded"
	r = s.call("POST", "/oauth/token", "grant_type=client_credentials&scope=charges:List", "Content-Type", form, "Authorization", lake)
	want(t, r, 200)
	third := "Bearer " + r.json(t)["access_token"].(string)
	want(t, s.call("GET", "/charges/ch_1", "", "Authorization", third), 200)
	r = s.call("GET", "/reports/daily", "", "Authorization", third)
	if want(t, r, 403); r.json(t)["permission"] != "reports:Get" {
		t.Fatalf("403 body %s", r.Body)
	}
	r = s.call("POST", "/oauth/token", "grant_type=client_credentials&allowedCIDRs="+url.QueryEscape("185.184.111.39/32"), "Content-Type", form, "Authorization", lake)
	want(t, r, 200)
	want401(t, s.call("GET", "/charges", "", "Authorization", "Bearer "+r.json(t)["access_token"].(string)))

	// Rotation: a new secret works at once, the old one during its grace,
	// and not after.
	old := f.Secrets["apk-1wtRxni5IsPsSpBLWpwr"]
	newer := f.RotateSecret("apk-1wtRxni5IsPsSpBLWpwr", time.Now().Add(time.Hour))
	s.reload(f, func() bool {
		return s.call("GET", "/charges", "", "Authorization", basic("apk-1wtRxni5IsPsSpBLWpwr", newer)).Status == 200
	})
	want(t, s.call("GET", "/charges", "", "Authorization", basic("apk-1wtRxni5IsPsSpBLWpwr", old)), 200)
	f.Bundle.Keys[0].Secrets = f.Bundle.Keys[0].Secrets[:1]
	s.reload(f, func() bool {
		return s.call("GET", "/charges", "", "Authorization", basic("apk-1wtRxni5IsPsSpBLWpwr", old)).Status == 401
	})
	// Deleting the key (the bundle no longer lists it) ends its tokens too.
	f.Bundle.Keys = f.Bundle.Keys[1:]
	s.reload(f, func() bool { return s.call("GET", "/charges", "", "Authorization", third).Status == 401 })
}

// Syndigo (003): username + secret → token, the custom scheme word EN, the
// ready AuthHeader, the auth test endpoint, per-environment lifetimes.
func TestSyndigo(t *testing.T) {
	for _, env := range []struct {
		name string
		ttl  int64
	}{{"production", 3600}, {"sandbox", 7 * 24 * 3600}} {
		t.Run(env.name, func(t *testing.T) {
			f := bundletest.New(bundle.AlgRS256)
			p := &f.Bundle.Policy
			p.BearerSchemes = []string{"EN"}
			p.TokenPaths = []string{"/api/auth"}
			p.Grants = []string{"api_key"}
			p.TokenTTLSeconds = env.ttl
			p.Rules = []bundle.Rule{{Paths: []string{"/api/products/*"}, Permission: "products:Read"}}
			f.AddKey("YourApiUsername", []string{"products:Read"})
			s := start(t, f)
			r := s.call("POST", "/api/auth", `{"username":"YourApiUsername","secret":"`+f.Secrets["YourApiUsername"]+`"}`, "Content-Type", "application/json")
			want(t, r, 201)
			body := r.json(t)
			tok := body["access_token"].(string)
			if body["auth_header"] != "EN "+tok || body["expires_in"].(float64) != float64(env.ttl) {
				t.Fatalf("token response %s", r.Body)
			}
			// Form-encoded body works too.
			want(t, s.call("POST", "/api/auth", "username=YourApiUsername&secret="+url.QueryEscape(f.Secrets["YourApiUsername"]), "Content-Type", "application/x-www-form-urlencoded"), 201)
			r = s.call("GET", "/api/auth/test", "", "Authorization", body["auth_header"].(string))
			want(t, r, 200)
			if r.json(t)["keyId"] != "YourApiUsername" {
				t.Fatalf("auth test %s", r.Body)
			}
			want(t, s.call("GET", "/api/products/1", "", "Authorization", "EN "+tok), 200)
			want401(t, s.call("GET", "/api/products/1", "", "Authorization", "Bearer "+tok)) // not a scheme of this policy
			want401(t, s.call("GET", "/api/auth/test", "", "Authorization", "EN "+tok+"x"))
		})
	}
}

// syncAccess (004): OAuth 2.0 password grant on /token (form or JSON), the
// lower-case "bearer" scheme word, and HTTP Basic as the fallback.
func TestSyncAccess(t *testing.T) {
	f := bundletest.New(bundle.AlgHS256)
	p := &f.Bundle.Policy
	p.TokenPaths = []string{"/appservices/token"}
	p.Grants = []string{"password"}
	p.TokenTTLSeconds = 1800
	p.Rules = []bundle.Rule{{Methods: []string{"GET"}, Paths: []string{"/appservices/api/v1/External/Data/*"}, Permission: "data:Read"}}
	f.AddKey("apiuser1", []string{"data:Read"})
	s := start(t, f)
	pass := f.Secrets["apiuser1"]
	for _, tc := range []struct{ ct, body string }{
		{"application/x-www-form-urlencoded", "grant_type=password&username=apiuser1&password=" + pass},
		{"application/json", `{"grant_type":"password","username":"apiuser1","password":"` + pass + `"}`},
	} {
		r := s.call("POST", "/appservices/token", tc.body, "Content-Type", tc.ct, "Accept", "application/json")
		want(t, r, 200)
		b := r.json(t)
		if b["token_type"] != "bearer" || b["expires_in"].(float64) != 1800 || b["username"] != "apiuser1" {
			t.Fatalf("token response %s", r.Body)
		}
		want(t, s.call("GET", "/appservices/api/v1/External/Data/NCS/Subscribers", "", "Authorization", "bearer "+b["access_token"].(string)), 200)
	}
	r := s.call("POST", "/appservices/token", "grant_type=password&username=apiuser1&password=nope", "Content-Type", "application/x-www-form-urlencoded")
	if want(t, r, 400); r.json(t)["error"] != "invalid_grant" {
		t.Fatalf("bad password: %s", r.Body)
	}
	// HTTP Basic fallback.
	want(t, s.call("GET", "/appservices/api/v1/External/Data/NCS/Subscribers", "", "Authorization", basic("apiuser1", pass)), 200)
	want401(t, s.call("GET", "/appservices/api/v1/External/Data/NCS/Subscribers", ""))
}
