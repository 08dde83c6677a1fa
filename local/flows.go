package local

import (
	"net/url"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// A Flow is one seed platform's walk-through: steps a user pastes into a
// shell, in order, sharing shell variables. The launcher prints them (see
// Render); the tests execute the same steps as HTTP requests and API calls.
type Flow struct {
	// Title names the platform and the policy; Sidecar is the sidecar's URL.
	Title, Sidecar string
	Steps          []Step
}

// A Step is one command. Exactly one of HTTP, Annotate, Wait, ReadSecret and
// Plugin is set.
type Step struct {
	// Comment says what the step shows.
	Comment    string
	HTTP       *HTTPStep
	Annotate   *AnnotateStep
	Wait       *WaitStep
	ReadSecret *ReadSecretStep
	Plugin     *PluginStep
	// Hint is printed as a comment after the step: a command to run in
	// another terminal (a watch), never executed.
	Hint string
}

// HTTPStep is a request to a sidecar. Header values and Body may hold $VAR
// references to variables earlier steps captured.
type HTTPStep struct {
	Method, URL string
	Header      [][2]string
	Body        string
	// Capture stores a string field of the JSON answer in a variable.
	Capture *Capture
	Want    Expect
	// Eventually marks a step whose answer changes within a moment (a new
	// bundle travelling to the sidecar): run it again if it does not match.
	Eventually bool
}

// Capture names the JSON field of an answer to keep as the variable Var.
type Capture struct {
	Var, Field string
}

// Expect is the answer a step must get.
type Expect struct {
	Status int
	// Equal maps a dotted JSON path of the body to its value as fmt's %v prints it.
	Equal map[string]string
	// NonEmpty lists dotted JSON paths that must hold a non-empty value.
	NonEmpty []string
}

// AnnotateStep sets an annotation of an ApiKey to the current Unix time,
// kept in the variable Var (kubectl annotate --overwrite).
type AnnotateStep struct {
	ApiKey, Key, Var string
}

// WaitStep waits until a field of an ApiKey (a JSONPath such as
// {.status.lastRotateRequest}) has Value, which may be a $VAR reference
// (kubectl wait --for=jsonpath).
type WaitStep struct {
	ApiKey, JSONPath, Value string
}

// ReadSecretStep reads a key of a Secret into the variable Var.
type ReadSecretStep struct {
	Secret, Key, Var string
}

// PluginStep runs the kubectl plugin (cmd/kubectl-keygate) with Args.
type PluginStep struct {
	Args []string
}

// flowInput is what the flows are made of.
type flowInput struct {
	// sidecars maps a policy to its sidecar's address (host:port).
	sidecars map[string]string
	// creds maps an ApiKey name to its credentials.
	creds map[string]Credentials
	// plugin is true when the kubectl plugin was built (make plugin).
	plugin bool
}

func jsonHeader() [2]string { return [2]string{"Content-Type", "application/json"} }

func auth(value string) [2]string { return [2]string{"Authorization", value} }

func ok(fields ...string) Expect {
	e := Expect{Status: 200, Equal: map[string]string{}}
	for i := 0; i+1 < len(fields); i += 2 {
		e.Equal[fields[i]] = fields[i+1]
	}
	return e
}

// unauthorized is the one 401 body, whatever the cause.
var unauthorized = Expect{Status: 401, Equal: map[string]string{"error": "unauthorized", "message": "authentication required"}}

// buildFlows returns the walk-through of the four seed platforms.
func buildFlows(in flowInput) []Flow {
	return []Flow{sendforsign(in), silverflow(in), syndigo(in), syncAccess(in)}
}

func sendforsign(in flowInput) Flow {
	base := "http://" + in.sidecars["sendforsign"]
	k := in.creds["platform"]
	return Flow{Title: "Sendforsign (TokenPolicy sendforsign, ApiKey platform)", Sidecar: base, Steps: []Step{
		{Comment: "A platform token from {apiKey, secret}: 201, kept in $TOKEN",
			HTTP: &HTTPStep{Method: "POST", URL: base + "/api/token", Header: [][2]string{jsonHeader()},
				Body:    `{"apiKey":"` + k.Key + `","secret":"` + k.Secret + `"}`,
				Capture: &Capture{Var: "TOKEN", Field: "access_token"},
				Want:    Expect{Status: 201, Equal: map[string]string{"token_type": "Bearer"}, NonEmpty: []string{"access_token", "auth_header"}}}},
		{Comment: "Use it: the demo upstream echoes who the sidecar says you are (X-Keygate-*)",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/api/contract/42", Header: [][2]string{auth("Bearer $TOKEN")},
				Want: ok("path", "/api/contract/42", "identity.X-Keygate-Key-Id", k.Key, "authorizationForwarded", "false")}},
		{Comment: "A client token for the platform's client acme-corp: 201, kept in $CLIENT_TOKEN",
			HTTP: &HTTPStep{Method: "POST", URL: base + "/api/token", Header: [][2]string{jsonHeader(), auth("Bearer $TOKEN")},
				Body: `{"clientKey":"acme-corp"}`, Capture: &Capture{Var: "CLIENT_TOKEN", Field: "access_token"},
				Want: Expect{Status: 201, NonEmpty: []string{"access_token"}}}},
		{Comment: "Acting for acme-corp",
			HTTP: &HTTPStep{Method: "POST", URL: base + "/api/contract", Header: [][2]string{auth("Bearer $CLIENT_TOKEN")},
				Want: ok("identity.X-Keygate-Client", "acme-corp", "identity.X-Keygate-Key-Id", k.Key)}},
		{Comment: "Testing mode: key ID and secret in the X-Sendforsign-Key header",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/api/contract", Header: [][2]string{{"X-Sendforsign-Key", k.Key + ":" + k.Secret}},
				Want: ok("identity.X-Keygate-Key-Id", k.Key)}},
		{Comment: "Revocation: the token revokes itself (201), on every sidecar of the policy",
			HTTP: &HTTPStep{Method: "POST", URL: base + "/api/token", Header: [][2]string{jsonHeader(), auth("Bearer $TOKEN")},
				Body: `{"action":"revoke"}`, Want: Expect{Status: 201, Equal: map[string]string{"revoked": "true"}}}},
		{Comment: "The revoked token is refused: 401, the same body as any failed authentication",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/api/contract/42", Header: [][2]string{auth("Bearer $TOKEN")}, Want: unauthorized}},
	}}
}

func silverflow(in flowInput) Flow {
	base := "http://" + in.sidecars["silverflow"]
	local, lake := in.creds[LocalKey], in.creds["data-lake"]
	f := Flow{Title: "Silverflow (TokenPolicy silverflow, ApiKeys " + LocalKey + " and data-lake)", Sidecar: base, Steps: []Step{
		{Comment: "HTTP Basic key:secret (the Secret's ready 'authorization' value): 200",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/charges", Header: [][2]string{auth(local.Authorization)},
				Want: ok("identity.X-Keygate-Key-Id", local.Key, "identity.X-Keygate-Permissions", "charges:List")}},
		{Comment: "A permission the key lacks: 403 naming it",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/reports/daily", Header: [][2]string{auth(local.Authorization)},
				Want: Expect{Status: 403, Equal: map[string]string{"error": "forbidden", "permission": "reports:All", "message": "missing permission reports:All"}}}},
		{Comment: "data-lake may only call from 185.184.111.39/32 and 102.177.115.120/29, not 127.0.0.1: 401",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/charges", Header: [][2]string{auth(lake.Authorization)}, Want: unauthorized}},
		{Comment: "Rotation on demand: a new secret, the old one valid for rotation.gracePeriod (default 24h)",
			Annotate: &AnnotateStep{ApiKey: LocalKey, Key: keygatev1.AnnotationRotate, Var: "ROTATE"},
			Hint: "kubectl get apikey " + LocalKey + " -w -o custom-columns=NAME:.metadata.name,VERSION:.status.secretVersion,OLD_SECRET_UNTIL:.status.previousSecretExpiresAt" +
				"   # and: kubectl get secret " + local.SecretName + " -w"},
		{Comment: "Wait until the operator has acted on it (a new secret in " + local.SecretName + ")",
			Wait: &WaitStep{ApiKey: LocalKey, JSONPath: "{.status.lastRotateRequest}", Value: "$ROTATE"}},
		{Comment: "The new Authorization value, kept in $NEW_AUTH",
			ReadSecret: &ReadSecretStep{Secret: local.SecretName, Key: "authorization", Var: "NEW_AUTH"}},
		{Comment: "The new secret works (within a second, once the bundle reaches the sidecar)",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/charges", Header: [][2]string{auth("$NEW_AUTH")}, Eventually: true,
				Want: ok("identity.X-Keygate-Key-Id", local.Key)}},
		{Comment: "...and so does the old one, until status.previousSecretExpiresAt",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/charges", Header: [][2]string{auth(local.Authorization)},
				Want: ok("identity.X-Keygate-Key-Id", local.Key)}},
	}}
	if in.plugin {
		f.Steps = append(f.Steps,
			Step{Comment: "The kubectl plugin shows it: secret version, the old secret's grace left, whether the bundle every sidecar loads carries the new one",
				Plugin: &PluginStep{Args: []string{"status", LocalKey}}},
			Step{Comment: "...and rotates too, waiting until every sidecar's bundle carries the new secret",
				Plugin: &PluginStep{Args: []string{"rotate", LocalKey, "--wait"}}})
	}
	return f
}

func syndigo(in flowInput) Flow {
	base := "http://" + in.sidecars["syndigo-sandbox"]
	k := in.creds["integration-user"]
	return Flow{Title: "Syndigo (TokenPolicy syndigo-sandbox, ApiKey integration-user)", Sidecar: base, Steps: []Step{
		{Comment: "username + secret: 201; auth_header is the ready 'EN <token>' value, kept in $EN_AUTH",
			HTTP: &HTTPStep{Method: "POST", URL: base + "/api/auth", Header: [][2]string{jsonHeader()},
				Body:    `{"username":"` + k.Key + `","secret":"` + k.Secret + `"}`,
				Capture: &Capture{Var: "EN_AUTH", Field: "auth_header"},
				Want:    Expect{Status: 201, NonEmpty: []string{"access_token", "auth_header"}}}},
		{Comment: "The EN scheme on the test endpoint: 200 with your identity",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/api/auth/test", Header: [][2]string{auth("$EN_AUTH")},
				Want: ok("authenticated", "true", "keyId", k.Key)}},
		{Comment: "Any path (defaultAction Authenticated) goes through to the upstream",
			HTTP: &HTTPStep{Method: "GET", URL: base + "/api/products/123", Header: [][2]string{auth("$EN_AUTH")},
				Want: ok("identity.X-Keygate-Key-Id", k.Key, "path", "/api/products/123")}},
	}}
}

func syncAccess(in flowInput) Flow {
	base := "http://" + in.sidecars["syncaccess"]
	k := in.creds["apiuser1"]
	form := url.Values{"grant_type": {"password"}, "username": {k.Key}, "password": {k.Secret}}.Encode()
	data := base + "/appservices/api/v1/External/Data/subscribers"
	return Flow{Title: "syncAccess (TokenPolicy syncaccess, ApiKey apiuser1)", Sidecar: base, Steps: []Step{
		{Comment: "OAuth 2.0 password grant, form-encoded: 200, kept in $SYNC_TOKEN",
			HTTP: &HTTPStep{Method: "POST", URL: base + "/token", Header: [][2]string{{"Content-Type", "application/x-www-form-urlencoded"}},
				Body: form, Capture: &Capture{Var: "SYNC_TOKEN", Field: "access_token"},
				Want: Expect{Status: 200, Equal: map[string]string{"token_type": "bearer", "username": k.Key}, NonEmpty: []string{"access_token", "expires_in"}}}},
		{Comment: "Use it",
			HTTP: &HTTPStep{Method: "GET", URL: data, Header: [][2]string{auth("Bearer $SYNC_TOKEN")},
				Want: ok("identity.X-Keygate-Key-Id", k.Key, "identity.X-Keygate-Permissions", "subscribers:Read")}},
		{Comment: "HTTP Basic as the fallback",
			HTTP: &HTTPStep{Method: "GET", URL: data, Header: [][2]string{auth(k.Authorization)},
				Want: ok("identity.X-Keygate-Key-Id", k.Key)}},
	}}
}
