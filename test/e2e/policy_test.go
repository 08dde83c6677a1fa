package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestPolicyFeatures: for each signing algorithm, everything the operator
// puts in a bundle — signing keys of that algorithm, extra scheme words, the
// API-key header, password and client grants, sub-clients, CIDRs, expiry —
// is accepted by the sidecar and behaves as declared.
func TestPolicyFeatures(t *testing.T) {
	for _, alg := range []keygatev1.SigningAlgorithm{keygatev1.EdDSA, keygatev1.ES256, keygatev1.RS256, keygatev1.HS256} {
		t.Run(string(alg), func(t *testing.T) {
			g := NewWithT(t)
			name := "features-" + strings.ToLower(string(alg))
			g.Expect(createPolicy(t.Context(), name, keygatev1.TokenPolicySpec{
				Signing: keygatev1.Signing{Algorithm: alg},
				Authentication: keygatev1.Authentication{
					BearerSchemes: []string{"EN", "Bearer"},
					APIKeyHeader:  "X-Api-Key",
				},
				Grants:        []keygatev1.GrantType{keygatev1.GrantAPIKey, keygatev1.GrantClientCredentials, keygatev1.GrantClientToken, keygatev1.GrantPassword},
				AllowedCIDRs:  []keygatev1.CIDR{"127.0.0.0/8"},
				PublicPaths:   []keygatev1.URLPath{"/healthz"},
				Rules:         []keygatev1.Rule{{Methods: []string{"GET"}, Paths: []keygatev1.URLPath{"/charges"}, Permission: "charges:List"}},
				DefaultAction: keygatev1.ActionAuthenticated,
			})).To(Succeed())
			expires := metav1.NewTime(time.Now().Add(24 * time.Hour).Truncate(time.Second))
			creds := createKey(t, name+"-key", keygatev1.ApiKeySpec{
				PolicyRef:    keygatev1.PolicyReference{Name: name},
				Permissions:  []keygatev1.Permission{"charges:All", "reports:List"},
				AllowedCIDRs: []keygatev1.CIDR{"127.0.0.1/32"},
				Clients:      []keygatev1.ApiKeyClient{{Key: "acme-corp", Permissions: []keygatev1.Permission{"charges:List"}}},
				ExpiresAt:    &expires,
			})
			elsewhere := createKey(t, name+"-elsewhere", keygatev1.ApiKeySpec{
				PolicyRef:    keygatev1.PolicyReference{Name: name},
				Permissions:  []keygatev1.Permission{"charges:All"},
				AllowedCIDRs: []keygatev1.CIDR{"10.0.0.0/8"},
			})
			sc := startSidecarFor(t, "sidecar-"+name, name)
			sc.waitWorks(creds)

			// Public path without credentials; an authenticated request no rule
			// matches under defaultAction Authenticated.
			g.Expect(sc.do(http.MethodGet, "/healthz", "").status).To(Equal(http.StatusOK))
			r := sc.get("/anything", creds.authorization)
			g.Expect(r.status).To(Equal(http.StatusOK), "defaultAction Authenticated: %s", r.raw)
			g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Permissions", "charges:All,reports:List"))

			// The key's CIDRs: 127.0.0.1 is outside 10.0.0.0/8.
			g.Expect(sc.get("/charges", elsewhere.authorization).body).To(Equal(unauthorized), "outside the key's CIDRs")

			// API-key header.
			r = sc.do(http.MethodGet, "/charges", "", "X-Api-Key", creds.key+":"+creds.secret)
			g.Expect(r.status).To(Equal(http.StatusOK), "API-key header: %s", r.raw)
			g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Key-Id", creds.key))
			g.Expect(r.body).NotTo(HaveKey("X-Api-Key"))

			// api_key grant; auth_header uses the first scheme word.
			body, _ := json.Marshal(map[string]string{"apiKey": creds.key, "secret": creds.secret})
			r = sc.do(http.MethodPost, "/oauth/token", string(body), "Content-Type", "application/json")
			g.Expect(r.status).To(Equal(http.StatusCreated), "api_key grant: %s", r.raw)
			tok, _ := r.body["access_token"].(string)
			g.Expect(r.body).To(HaveKeyWithValue("auth_header", "EN "+tok))
			g.Expect(r.body).To(HaveKeyWithValue("expires_in", BeNumerically("==", 3600)))
			g.Expect(sc.status("/charges", "EN "+tok)).To(Equal(http.StatusOK), "EN scheme")
			g.Expect(sc.status("/charges", "Bearer "+tok)).To(Equal(http.StatusOK), "Bearer scheme")

			// The token's kid is the policy's signing key; asymmetric keys are in the JWKS.
			policyObj := &keygatev1.TokenPolicy{}
			g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, policyObj)).To(Succeed())
			g.Expect(policyObj.Status.SigningKeyID).NotTo(BeEmpty())
			r = sc.do(http.MethodGet, "/.well-known/jwks.json", "")
			g.Expect(r.status).To(Equal(http.StatusOK))
			if alg == keygatev1.HS256 {
				g.Expect(r.raw).To(MatchJSON(`{"keys":[]}`), "no public key for HS256, and keys is an array (RFC 7517)")
			} else {
				g.Expect(r.body["keys"]).To(ContainElement(And(
					HaveKeyWithValue("kid", policyObj.Status.SigningKeyID), HaveKeyWithValue("alg", string(alg)),
					Not(HaveKey("d")))), "the JWKS publishes the current key, public part only")
			}

			// Client token for the key's sub-client.
			r = sc.do(http.MethodPost, "/api/token", `{"clientKey":"acme-corp"}`, "Content-Type", "application/json", "Authorization", "Bearer "+tok)
			g.Expect(r.status).To(Equal(http.StatusCreated), "client token: %s", r.raw)
			clientTok, _ := r.body["access_token"].(string)
			r = sc.get("/charges", "Bearer "+clientTok)
			g.Expect(r.status).To(Equal(http.StatusOK), "client token: %s", r.raw)
			g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Client", "acme-corp"))
			g.Expect(r.body).To(HaveKeyWithValue("X-Keygate-Permissions", "charges:List"))
			r = sc.do(http.MethodPost, "/api/token", `{"clientKey":"other"}`, "Content-Type", "application/json", "Authorization", "Bearer "+tok)
			g.Expect(r.status).To(BeNumerically(">=", 400), "not one of the key's clients: %s", r.raw)

			// Password and client_credentials grants.
			r = sc.do(http.MethodPost, "/token", url.Values{"grant_type": {"password"}, "username": {creds.key}, "password": {creds.secret}}.Encode(),
				"Content-Type", "application/x-www-form-urlencoded")
			g.Expect(r.status).To(Equal(http.StatusOK), "password grant: %s", r.raw)
			g.Expect(r.body).To(HaveKeyWithValue("username", creds.key))
			pwTok, _ := r.body["access_token"].(string)
			g.Expect(sc.status("/charges", "Bearer "+pwTok)).To(Equal(http.StatusOK))
			r = sc.do(http.MethodPost, "/token", url.Values{"grant_type": {"client_credentials"}, "scope": {"reports:List"}}.Encode(),
				"Content-Type", "application/x-www-form-urlencoded", "Authorization", creds.authorization)
			g.Expect(r.status).To(Equal(http.StatusOK), "client_credentials grant: %s", r.raw)
			ccTok, _ := r.body["access_token"].(string)
			g.Expect(sc.status("/charges", "Bearer "+ccTok)).To(Equal(http.StatusForbidden), "scope narrowed to reports:List")

			// Expiry in the status; the key is in force.
			g.Expect(getKey(t, name+"-key").Status.ExpiresAt).NotTo(BeNil())
		})
	}
}

// TestSigningKeyRotation: changing the algorithm rotates the signing key; a
// token signed by the previous key keeps working on a running sidecar, and
// new tokens carry the new key.
func TestSigningKeyRotation(t *testing.T) {
	g := NewWithT(t)
	const name = "signing"
	g.Expect(createPolicy(t.Context(), name, keygatev1.TokenPolicySpec{
		Signing:       keygatev1.Signing{Algorithm: keygatev1.EdDSA},
		DefaultAction: keygatev1.ActionAuthenticated,
	})).To(Succeed())
	creds := createKey(t, "signing-key", keygatev1.ApiKeySpec{PolicyRef: keygatev1.PolicyReference{Name: name}})
	sc := startSidecarFor(t, "sidecar-signing", name)
	sc.waitWorks(creds)
	oldTok := sc.token(creds)

	tp := &keygatev1.TokenPolicy{}
	g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, tp)).To(Succeed())
	oldKid := tp.Status.SigningKeyID
	patch := client.MergeFrom(tp.DeepCopy())
	tp.Spec.Signing.Algorithm = keygatev1.ES256
	g.Expect(suite.k8s.Patch(t.Context(), tp, patch)).To(Succeed())

	g.Eventually(func(g Gomega) {
		r := sc.do(http.MethodGet, "/.well-known/jwks.json", "")
		g.Expect(r.body["keys"]).To(ContainElement(HaveKeyWithValue("alg", "ES256")))
	}, propagationTimeout, interval).Should(Succeed(), "the new ES256 key reaches the sidecar")
	g.Expect(sc.do(http.MethodGet, "/.well-known/jwks.json", "").body["keys"]).To(ContainElement(HaveKeyWithValue("kid", oldKid)),
		"the previous key is published until it retires")
	g.Expect(sc.status("/charges", "Bearer "+oldTok)).To(Equal(http.StatusOK), "a token of the previous key still works")
	newTok := sc.token(creds)
	g.Expect(sc.status("/charges", "Bearer "+newTok)).To(Equal(http.StatusOK))
	header, _ := jwtHeader(newTok)
	g.Expect(header).To(HaveKeyWithValue("alg", "ES256"))
	g.Expect(header).NotTo(HaveKeyWithValue("kid", oldKid))
}

// jwtHeader decodes a compact JWS's protected header.
func jwtHeader(tok string) (map[string]any, error) { return jwtPart(tok, 0) }

// jwtClaims decodes a compact JWS's payload (unverified).
func jwtClaims(tok string) (map[string]any, error) { return jwtPart(tok, 1) }

func jwtPart(tok string, i int) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a compact JWS: %d parts", len(parts))
	}
	raw, err := base64URL(parts[i])
	if err != nil {
		return nil, err
	}
	var h map[string]any
	err = json.Unmarshal(raw, &h)
	return h, err
}
