package local

import (
	"strings"
	"testing"
)

func TestShellWord(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"plain", "'plain'"},
		{"it's", `'it'\''s'`},
		{"Bearer $TOKEN", `'Bearer '"$TOKEN"`},
		{"$NEW_AUTH", `"$NEW_AUTH"`},
		{`{"a":"$X"}`, `'{"a":"'"$X"'"}'`},
		{"$lower stays literal", "'$lower stays literal'"},
	}
	for _, tt := range tests {
		if got := shellWord(tt.in); got != tt.want {
			t.Errorf("shellWord(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestCommand(t *testing.T) {
	tests := []struct {
		name string
		step Step
		want string
	}{
		{"GET with a variable", Step{HTTP: &HTTPStep{Method: "GET", URL: "http://127.0.0.1:8443/x", Header: [][2]string{{"Authorization", "Bearer $TOKEN"}}}},
			`curl -sS -w ' [HTTP %{http_code}]\n' 'http://127.0.0.1:8443/x' -H 'Authorization: Bearer '"$TOKEN"`},
		{"POST capturing a field", Step{HTTP: &HTTPStep{Method: "POST", URL: "http://h/t", Body: `{"a":1}`, Capture: &Capture{Var: "TOKEN", Field: "access_token"}}},
			`RESP=$(curl -sS -X POST 'http://h/t' -d '{"a":1}'); echo "$RESP"; TOKEN=$(printf '%s' "$RESP" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')`},
		{"annotate now", Step{Annotate: &AnnotateStep{ApiKey: "k", Key: "keygate.dev/rotate", Var: "ROTATE"}},
			`ROTATE=$(date +%s); kubectl annotate apikey k keygate.dev/rotate="$ROTATE" --overwrite`},
		{"wait", Step{Wait: &WaitStep{ApiKey: "k", JSONPath: "{.status.lastRotateRequest}", Value: "$ROTATE"}},
			`kubectl wait apikey/k --for=jsonpath='{.status.lastRotateRequest}'="$ROTATE" --timeout=30s`},
		{"plugin", Step{Plugin: &PluginStep{Args: []string{"rotate", "k", "--wait"}}}, `kubectl keygate rotate k --wait`},
		{"read a Secret", Step{ReadSecret: &ReadSecretStep{Secret: "k-credentials", Key: "authorization", Var: "NEW_AUTH"}},
			`NEW_AUTH=$(kubectl get secret k-credentials -o jsonpath='{.data.authorization}' | base64 -d); echo "$NEW_AUTH"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.step.Command(); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// TestFlowsCoverTheSeeds: the printed walk-through holds every seed flow and
// failure the README promises, each with a command.
func TestFlowsCoverTheSeeds(t *testing.T) {
	in := flowInput{
		sidecars: map[string]string{"sendforsign": "a:1", "silverflow": "b:2", "syndigo-sandbox": "c:3", "syncaccess": "d:4"},
		creds:    map[string]Credentials{},
		plugin:   true,
	}
	for _, k := range []string{"platform", LocalKey, "data-lake", "integration-user", "apiuser1"} {
		in.creds[k] = Credentials{ApiKey: k, Key: "apk-" + k, Secret: "s-" + k, Authorization: "Basic " + k, SecretName: k + "-credentials"}
	}
	flows := buildFlows(in)
	statuses := map[int]int{}
	var annotate, wait, read, plugin int
	for _, f := range flows {
		for _, s := range f.Steps {
			if s.Command() == "" || s.Comment == "" {
				t.Errorf("%s: a step without a command or comment: %+v", f.Title, s)
			}
			switch {
			case s.HTTP != nil:
				statuses[s.HTTP.Want.Status]++
			case s.Annotate != nil:
				annotate++
			case s.Wait != nil:
				wait++
			case s.ReadSecret != nil:
				read++
			case s.Plugin != nil:
				plugin++
			}
		}
	}
	for _, code := range []int{200, 201, 401, 403} {
		if statuses[code] == 0 {
			t.Errorf("no step expects %d", code)
		}
	}
	if annotate != 1 || wait != 1 || read != 1 {
		t.Errorf("rotation: %d annotate, %d wait, %d read steps; want one each", annotate, wait, read)
	}
	if plugin != 2 {
		t.Errorf("%d kubectl keygate steps, want 2", plugin)
	}
	text := Render(flows)
	for _, want := range []string{"/api/token", "X-Sendforsign-Key", "/reports/daily", "/api/auth/test", "grant_type=password", `{"action":"revoke"}`, "keygate.dev/rotate"} {
		if !strings.Contains(text, want) {
			t.Errorf("rendered flows lack %q", want)
		}
	}
}
