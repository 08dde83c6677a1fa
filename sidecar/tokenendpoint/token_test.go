package tokenendpoint_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/server"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
	"github.com/keygate-dev/keygate/sidecar/token"
	"github.com/keygate-dev/keygate/sidecar/tokenendpoint"
)

const jsonCT = "application/json"
const formCT = "application/x-www-form-urlencoded"

func TestTokenEndpointSendforsignFlow(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	r := h.Do("POST", "/api/token", `{"apiKey":"apk-lake","secret":"`+f.Secrets["apk-lake"]+`"}`, "Content-Type", jsonCT)
	if r.Status != 201 || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("got %d %v %s", r.Status, r.Header, r.Body)
	}
	body := r.JSON(t)
	tok := body["access_token"].(string)
	if body["token_type"] != "Bearer" || body["expires_in"].(float64) != 3600 || body["auth_header"] != "Bearer "+tok {
		t.Fatalf("body %v", body)
	}
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok); r.Status != 200 {
		t.Fatalf("platform token refused: %d", r.Status)
	}
	// Client token: permissions of the client within the key's.
	r = h.Do("POST", "/api/token", `{"clientKey":"acme"}`, "Content-Type", jsonCT, "Authorization", "Bearer "+tok)
	if r.Status != 201 {
		t.Fatalf("client token: %d %s", r.Status, r.Body)
	}
	clientTok := r.JSON(t)["access_token"].(string)
	if r.JSON(t)["expires_in"].(float64) != 900 {
		t.Fatal("client token TTL")
	}
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+clientTok); r.Status != 200 {
		t.Fatalf("client token refused: %d", r.Status)
	}
	// acme asks for charges:Create but the key lacks it: the token lacks it too.
	if r := h.Do("POST", "/charges", "", "Authorization", "Bearer "+clientTok); r.Status != 403 {
		t.Fatalf("client token beyond the key's permissions: %d", r.Status)
	}
	// The client token cannot reach reports, which the key holds but the client does not.
	if r := h.Do("GET", "/reports/x", "", "Authorization", "Bearer "+clientTok); r.Status != 403 {
		t.Fatalf("client token beyond its client's permissions: %d", r.Status)
	}
	// Unknown client, and a client token asking for client tokens.
	if r := h.Do("POST", "/api/token", `{"clientKey":"nobody"}`, "Content-Type", jsonCT, "Authorization", "Bearer "+tok); r.Status != 400 {
		t.Fatalf("unknown client: %d", r.Status)
	}
	if r := h.Do("POST", "/api/token", `{"clientKey":"acme"}`, "Content-Type", jsonCT, "Authorization", "Bearer "+clientTok); r.Status != 403 {
		t.Fatalf("client token minting client tokens: %d", r.Status)
	}
	// Another platform may not revoke this client token.
	otherTok := h.Token("apk-other")
	r = h.Do("POST", "/api/token", `{"action":"revoke","access_token":"`+clientTok+`"}`, "Content-Type", jsonCT, "Authorization", "Bearer "+otherTok)
	if r.Status != 403 {
		t.Fatalf("foreign revoke: %d %s", r.Status, r.Body)
	}
	// The owner may.
	r = h.Do("POST", "/api/token", `{"action":"revoke","access_token":"`+clientTok+`"}`, "Content-Type", jsonCT, "Authorization", "Bearer "+tok)
	if r.Status != 201 {
		t.Fatalf("owner revoke: %d %s", r.Status, r.Body)
	}
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+clientTok), sidecartest.Challenge)
	// Self-revoke.
	if r := h.Do("POST", "/api/token", `{"action":"revoke"}`, "Content-Type", jsonCT, "Authorization", "Bearer "+tok); r.Status != 201 {
		t.Fatalf("self revoke: %d %s", r.Status, r.Body)
	}
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok), sidecartest.Challenge)
	// Testing mode: API key header plus client key.
	f.Bundle.Policy.APIKeyHeader = "X-Sendforsign-Key"
	h.reload()
	hdr := "apk-lake:" + f.Secrets["apk-lake"]
	r = h.Do("GET", "/charges", "", "X-Sendforsign-Key", hdr, "X-Keygate-Client-Key", "acme")
	seen := r.Seen(t)
	if seen.Headers[server.HeaderClient][0] != "acme" || seen.Headers["X-Sendforsign-Key"] != nil {
		t.Fatalf("api key header mode: %v", seen.Headers)
	}
	if r := h.Do("POST", "/api/token", `{"clientKey":"acme"}`, "Content-Type", jsonCT, "X-Sendforsign-Key", hdr); r.Status != 201 {
		t.Fatalf("client token with the API-key header: %d %s", r.Status, r.Body)
	}
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "X-Sendforsign-Key", "apk-lake:wrong"), sidecartest.Challenge)
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "X-Sendforsign-Key", hdr, "X-Keygate-Client-Key", "nobody"), sidecartest.Challenge)
}

func TestTokenEndpointErrors(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	lake := f.Secrets["apk-lake"]
	invalidClient := `{"error":"invalid_client","error_description":"client authentication failed"}` + "\n"
	for _, tc := range []struct {
		name, ct, body string
		status         int
		code           string
	}{
		{"unknown key", jsonCT, `{"apiKey":"apk-nobody","secret":"` + lake + `"}`, 401, "invalid_client"},
		{"wrong secret", jsonCT, `{"apiKey":"apk-lake","secret":"x` + lake + `"}`, 401, "invalid_client"},
		{"key outside CIDR", jsonCT, `{"apiKey":"apk-far","secret":"` + f.Secrets["apk-far"] + `"}`, 401, "invalid_client"},
		{"no secret", jsonCT, `{"apiKey":"apk-lake"}`, 400, "invalid_request"},
		{"empty body", jsonCT, `{}`, 400, "invalid_request"},
		{"not JSON", jsonCT, `{"apiKey":`, 400, "invalid_request"},
		{"two JSON values", jsonCT, `{} {}`, 400, "invalid_request"},
		{"text/plain", "text/plain", `{"apiKey":"apk-lake","secret":"` + lake + `"}`, 400, "invalid_request"},
		{"no content type", "", `{"apiKey":"apk-lake","secret":"` + lake + `"}`, 400, "invalid_request"},
		{"password grant disabled", formCT, "grant_type=password&username=apk-lake&password=" + lake, 400, "unsupported_grant_type"},
		{"unknown grant", formCT, "grant_type=authorization_code&code=x", 400, "unsupported_grant_type"},
		{"repeated parameter", formCT, "grant_type=client_credentials&client_id=a&client_id=b", 400, "invalid_request"},
		{"client_credentials unknown client", formCT, "grant_type=client_credentials&client_id=apk-nobody&client_secret=" + lake, 401, "invalid_client"},
		{"scope wider than the key", formCT, "grant_type=client_credentials&client_id=apk-lake&client_secret=" + lake + "&scope=admin:All", 400, "invalid_scope"},
		{"CIDRs wider than the key", jsonCT, `{"apiKey":"apk-local","secret":"` + f.Secrets["apk-local"] + `","allowedCIDRs":["0.0.0.0/0"]}`, 400, "invalid_request"},
		{"bad CIDR", jsonCT, `{"apiKey":"apk-lake","secret":"` + lake + `","allowedCIDRs":["nope"]}`, 400, "invalid_request"},
		{"unknown action", jsonCT, `{"action":"explode"}`, 400, "invalid_request"},
		{"revoke without credentials", jsonCT, `{"action":"revoke"}`, 401, "invalid_client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.Do("POST", "/api/token", tc.body, "Content-Type", tc.ct)
			if r.Status != tc.status || r.JSON(t)["error"] != tc.code {
				t.Fatalf("got %d %s, want %d %s", r.Status, r.Body, tc.status, tc.code)
			}
			if r.Header.Get("Cache-Control") != "no-store" {
				t.Fatal("no Cache-Control: no-store")
			}
			if tc.status == 401 {
				if string(r.Body) != invalidClient || r.Header.Get("WWW-Authenticate") == "" {
					t.Fatalf("401 differs: %q", r.Body)
				}
			}
		})
	}
	t.Run("body too large", func(t *testing.T) {
		r := h.Do("POST", "/api/token", `{"apiKey":"`+strings.Repeat("a", tokenendpoint.MaxBodySize)+`"}`, "Content-Type", jsonCT)
		if r.Status != http.StatusRequestEntityTooLarge {
			t.Fatalf("got %d", r.Status)
		}
	})
	t.Run("GET", func(t *testing.T) {
		if r := h.Do("GET", "/api/token", ""); r.Status != http.StatusMethodNotAllowed {
			t.Fatalf("got %d", r.Status)
		}
	})
}

func TestOAuthGrants(t *testing.T) {
	f := sidecartest.ChargesFixture()
	f.Bundle.Policy.Grants = append(f.Bundle.Policy.Grants, "password")
	h := newHarness(t, f)
	lake := f.Secrets["apk-lake"]
	for _, tc := range []struct{ name, ct, body string }{
		{"password form", formCT, "grant_type=password&username=apk-lake&password=" + lake},
		{"password JSON", jsonCT, `{"grant_type":"password","username":"apk-lake","password":"` + lake + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.Do("POST", "/token", tc.body, "Content-Type", tc.ct)
			if r.Status != 200 {
				t.Fatalf("got %d %s", r.Status, r.Body)
			}
			b := r.JSON(t)
			if b["token_type"] != "bearer" || b["username"] != "apk-lake" || b["expires_in"].(float64) != 3600 {
				t.Fatalf("body %v", b)
			}
		})
	}
	r := h.Do("POST", "/token", "grant_type=password&username=apk-lake&password=wrong", "Content-Type", formCT)
	if r.Status != 400 || r.JSON(t)["error"] != "invalid_grant" {
		t.Fatalf("bad password: %d %s", r.Status, r.Body)
	}
	// client_credentials with Basic client authentication, narrowed.
	r = h.Do("POST", "/oauth/token", "grant_type=client_credentials&scope=charges:List&allowedCIDRs=127.0.0.1/32", "Content-Type", formCT,
		"Authorization", sidecartest.Basic("apk-lake", lake))
	if r.Status != 200 || r.JSON(t)["scope"] != "charges:List" {
		t.Fatalf("client_credentials: %d %s", r.Status, r.Body)
	}
	narrowTok := r.JSON(t)["access_token"].(string)
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+narrowTok); r.Status != 200 {
		t.Fatalf("narrowed token: %d", r.Status)
	}
	if r := h.Do("GET", "/reports/x", "", "Authorization", "Bearer "+narrowTok); r.Status != 403 {
		t.Fatalf("narrowed token beyond its scope: %d", r.Status)
	}
	// In the body, narrowed to an address block this client is not in.
	r = h.Do("POST", "/oauth/token", `{"grant_type":"client_credentials","client_id":"apk-lake","client_secret":"`+lake+`","allowedCIDRs":["10.9.0.0/16"]}`, "Content-Type", jsonCT)
	if r.Status != 200 {
		t.Fatalf("client_credentials body: %d %s", r.Status, r.Body)
	}
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+r.JSON(t)["access_token"].(string)), sidecartest.Challenge)
	// Both methods at once is refused.
	r = h.Do("POST", "/oauth/token", "grant_type=client_credentials&client_id=apk-lake&client_secret="+lake, "Content-Type", formCT, "Authorization", sidecartest.Basic("apk-lake", lake))
	if r.Status != 400 {
		t.Fatalf("two client auth methods: %d", r.Status)
	}
}

func TestRevokeIntrospectJWKS(t *testing.T) {
	f := sidecartest.ChargesFixture()
	h := newHarness(t, f)
	lake := sidecartest.Basic("apk-lake", f.Secrets["apk-lake"])
	tok := h.Token("apk-lake")
	// Introspection needs credentials.
	if r := h.Do("POST", "/oauth/introspect", "token="+tok, "Content-Type", formCT); r.Status != 401 {
		t.Fatalf("anonymous introspection: %d", r.Status)
	}
	r := h.Do("POST", "/oauth/introspect", "token="+tok, "Content-Type", formCT, "Authorization", sidecartest.Basic("apk-other", f.Secrets["apk-other"]))
	if b := r.JSON(t); r.Status != 200 || b["active"] != true || b["sub"] != "apk-lake" || b["scope"] != "charges:List reports:All" {
		t.Fatalf("introspect: %d %s", r.Status, r.Body)
	}
	r = h.Do("POST", "/oauth/introspect", "token=garbage", "Content-Type", formCT, "Authorization", lake)
	if r.JSON(t)["active"] != false {
		t.Fatalf("garbage active: %s", r.Body)
	}
	// RFC 7009: another key may not revoke it; unknown tokens are 200.
	if r := h.Do("POST", "/oauth/revoke", "token="+tok, "Content-Type", formCT, "Authorization", sidecartest.Basic("apk-other", f.Secrets["apk-other"])); r.Status != 403 {
		t.Fatalf("foreign RFC 7009 revoke: %d", r.Status)
	}
	if r := h.Do("POST", "/oauth/revoke", "token=garbage", "Content-Type", formCT, "Authorization", lake); r.Status != 200 {
		t.Fatalf("unknown token: %d", r.Status)
	}
	if r := h.Do("POST", "/oauth/revoke", "token="+tok+"&client_id=apk-lake&client_secret="+f.Secrets["apk-lake"], "Content-Type", formCT); r.Status != 200 {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok), sidecartest.Challenge)
	r = h.Do("POST", "/oauth/introspect", "token="+tok, "Content-Type", formCT, "Authorization", lake)
	if r.JSON(t)["active"] != false {
		t.Fatalf("revoked token active: %s", r.Body)
	}
	// JWKS: public keys only.
	r = h.Do("GET", "/.well-known/jwks.json", "")
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(r.Body, &set); err != nil || len(set.Keys) != 1 || !set.Keys[0].IsPublic() || strings.Contains(string(r.Body), `"d"`) {
		t.Fatalf("jwks: %s", r.Body)
	}
	// Auth test endpoint.
	r = h.Do("GET", "/api/auth/test", "", "Authorization", lake)
	if r.Status != 200 || r.JSON(t)["keyId"] != "apk-lake" {
		t.Fatalf("auth test: %d %s", r.Status, r.Body)
	}
	sidecartest.Expect401(t, h.Do("GET", "/api/auth/test", ""), sidecartest.Challenge)
}

func TestHS256JWKSIsEmpty(t *testing.T) {
	f := bundletest.New(bundle.AlgHS256)
	h := newHarness(t, f)
	r := h.Do("GET", "/.well-known/jwks.json", "")
	if strings.TrimSpace(string(r.Body)) != `{"keys":[]}` { // RFC 7517 §5.1: an array, never null
		t.Fatalf("HS256 key published: %s", r.Body)
	}
}

// signWith signs claims with the fixture's current key, or with key/alg/kid given.
func signWith(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestBearerAttacks(t *testing.T) {
	for _, alg := range []string{bundle.AlgEdDSA, bundle.AlgES256, bundle.AlgRS256, bundle.AlgHS256} {
		t.Run(alg, func(t *testing.T) { bearerAttacks(t, alg) })
	}
}

func bearerAttacks(t *testing.T, alg string) {
	f := sidecartest.ChargesFixture()
	sk, err := bundle.NewSigningKey(alg, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.Bundle.SigningKeys = []bundle.SigningKey{sk}
	h := newHarness(t, f)
	good := h.Token("apk-lake")
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+good); r.Status != 200 {
		t.Fatalf("good token refused: %d", r.Status)
	}
	priv, _ := sk.PrivateKey()
	now := time.Now()
	claims := func(mut func(*token.Claims)) *token.Claims {
		c := &token.Claims{Claims: jwt.Claims{Issuer: f.Bundle.Policy.Issuer, Audience: jwt.Audience{f.Bundle.Policy.Audience},
			Subject: "apk-lake", IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
			Expiry: jwt.NewNumericDate(now.Add(time.Hour)), ID: token.NewID()}, Perms: []string{"charges:List"}}
		if mut != nil {
			mut(c)
		}
		return c
	}
	ja := jose.SignatureAlgorithm(alg)
	// Sanity: our hand-made token is accepted.
	if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+signWith(t, ja, priv, sk.KeyID, claims(nil))); r.Status != 200 {
		t.Fatalf("hand-made token refused: %d", r.Status)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	parts := strings.Split(good, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := strings.Replace(string(payload), `"charges:List"`, `"charges:All"`, 1)
	pub, _, _ := sk.PublicJWK()
	pubBytes, _ := json.Marshal(pub)
	otherKey := ed25519.NewKeyFromSeed(make([]byte, 32))
	attacks := map[string]string{
		"alg none":            b64([]byte(`{"alg":"none","kid":"`+sk.KeyID+`","typ":"JWT"}`)) + "." + parts[1] + ".",
		"alg none no sig":     b64([]byte(`{"alg":"none","kid":"`+sk.KeyID+`"}`)) + "." + parts[1],
		"tampered payload":    parts[0] + "." + b64([]byte(tampered)) + "." + parts[2],
		"signature stripped":  parts[0] + "." + parts[1] + ".",
		"unknown kid":         signWith(t, ja, priv, "k-unknown", claims(nil)),
		"no kid":              signWith(t, ja, priv, "", claims(nil)),
		"expired":             signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-time.Hour)) })),
		"not yet valid":       signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Hour)) })),
		"no exp":              signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.Expiry = nil })),
		"wrong iss":           signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.Issuer = "https://evil" })),
		"wrong aud":           signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.Audience = jwt.Audience{"other"} })),
		"unknown subject":     signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.Subject = "apk-nobody" })),
		"bad jti":             signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.ID = "a/b" })),
		"foreign Ed25519 key": signWith(t, jose.EdDSA, otherKey, sk.KeyID, claims(nil)),
		"oversized":           signWith(t, ja, priv, sk.KeyID, claims(func(c *token.Claims) { c.Perms = []string{strings.Repeat("x", token.MaxSize)} })),
		"garbage":             "not-a-token",
	}
	if alg != bundle.AlgHS256 {
		// HS256 keyed with the public key (the classic confusion attack),
		// with the JWK document and with the raw key bytes.
		attacks["HS256 signed with the public JWK"] = signWith(t, jose.HS256, pubBytes, sk.KeyID, claims(nil))
		if ed, ok := pub.Key.(ed25519.PublicKey); ok {
			attacks["HS256 signed with the public key bytes"] = signWith(t, jose.HS256, append(append([]byte{}, ed...), ed...), sk.KeyID, claims(nil))
		}
	} else {
		attacks["HS256 signed with another secret"] = signWith(t, jose.HS256, []byte(strings.Repeat("k", 32)), sk.KeyID, claims(nil))
	}
	for name, tok := range attacks {
		t.Run(name, func(t *testing.T) {
			sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok), sidecartest.Challenge)
		})
	}
	t.Run("two Authorization headers", func(t *testing.T) {
		sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+good, "Authorization", "Bearer "+good), sidecartest.Challenge)
	})
	t.Run("scheme word is case-insensitive", func(t *testing.T) {
		if r := h.Do("GET", "/charges", "", "Authorization", "bEaReR "+good); r.Status != 200 {
			t.Fatalf("got %d", r.Status)
		}
	})
	t.Run("retired signing key", func(t *testing.T) {
		f.RotateSigningKey(alg, time.Now().Add(time.Hour))
		h.reload()
		if r := h.Do("GET", "/charges", "", "Authorization", "Bearer "+good); r.Status != 200 {
			t.Fatalf("token of the previous key before it retires: %d", r.Status)
		}
		f.Bundle.SigningKeys[1].RetiresAt = ptr(time.Now().Add(-time.Second))
		h.reload()
		sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+good), sidecartest.Challenge)
	})
	t.Run("key removed from the bundle", func(t *testing.T) {
		tok := h.Token("apk-other")
		f.Bundle.Keys = f.Bundle.Keys[:1]
		h.reload()
		sidecartest.Expect401(t, h.Do("GET", "/charges", "", "Authorization", "Bearer "+tok), sidecartest.Challenge)
	})
}

func ptr[T any](v T) *T { return &v }
