package local

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// variable matches the $VAR references a step may hold.
var variable = regexp.MustCompile(`\$[A-Z][A-Z0-9_]*`)

// plainWord matches words the shell takes as they are.
var plainWord = regexp.MustCompile(`^[A-Za-z0-9_./:=@+,-]+$`)

// shellWord quotes s as one shell word: literal text in single quotes, $VAR
// references in double quotes so the shell expands them.
func shellWord(s string) string {
	if s == "" {
		return "''"
	}
	var b strings.Builder
	last := 0
	lit := func(t string) {
		if t != "" {
			b.WriteString("'" + strings.ReplaceAll(t, "'", `'\''`) + "'")
		}
	}
	for _, m := range variable.FindAllStringIndex(s, -1) {
		lit(s[last:m[0]])
		b.WriteString(`"` + s[m[0]:m[1]] + `"`)
		last = m[1]
	}
	lit(s[last:])
	return b.String()
}

// Command renders a step as the shell command a user pastes (empty for none).
func (s Step) Command() string {
	switch {
	case s.HTTP != nil:
		return s.HTTP.command()
	case s.Annotate != nil:
		a := s.Annotate
		return fmt.Sprintf("%s=$(date +%%s); kubectl annotate apikey %s %s=\"$%s\" --overwrite", a.Var, a.ApiKey, a.Key, a.Var)
	case s.Wait != nil:
		return fmt.Sprintf("kubectl wait apikey/%s --for=jsonpath=%s=%s --timeout=30s", s.Wait.ApiKey, shellWord(s.Wait.JSONPath), shellWord(s.Wait.Value))
	case s.Plugin != nil:
		words := []string{"kubectl", "keygate"}
		for _, a := range s.Plugin.Args {
			if !plainWord.MatchString(a) {
				a = shellWord(a)
			}
			words = append(words, a)
		}
		return strings.Join(words, " ")
	case s.ReadSecret != nil:
		r := s.ReadSecret
		return fmt.Sprintf("%s=$(kubectl get secret %s -o jsonpath=%s | base64 -d); echo \"$%s\"", r.Var, r.Secret, shellWord("{.data."+r.Key+"}"), r.Var)
	}
	return ""
}

func (h *HTTPStep) command() string {
	words := []string{"curl", "-sS"}
	if h.Capture == nil {
		words = append(words, "-w", shellWord(` [HTTP %{http_code}]\n`))
	}
	if h.Method != "GET" {
		words = append(words, "-X", h.Method)
	}
	words = append(words, shellWord(h.URL))
	for _, kv := range h.Header {
		words = append(words, "-H", shellWord(kv[0]+": "+kv[1]))
	}
	if h.Body != "" {
		words = append(words, "-d", shellWord(h.Body))
	}
	cmd := strings.Join(words, " ")
	if h.Capture != nil {
		// Show the answer and keep one field of it (no jq needed).
		sed := fmt.Sprintf(`s/.*"%s":"\([^"]*\)".*/\1/p`, h.Capture.Field)
		cmd = fmt.Sprintf(`RESP=$(%s); echo "$RESP"; %s=$(printf '%%s' "$RESP" | sed -n %s)`, cmd, h.Capture.Var, shellWord(sed))
	}
	return cmd
}

// expectation says in a few words what the step answers.
func (h *HTTPStep) expectation() string {
	var parts []string
	keys := make([]string, 0, len(h.Want.Equal))
	for k := range h.Want.Equal {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+h.Want.Equal[k])
	}
	parts = append(parts, h.Want.NonEmpty...)
	s := fmt.Sprintf("expect %d", h.Want.Status)
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, ", ")
	}
	return s
}

// Render returns the flows as commands to paste, each under a comment saying
// what it shows and what it answers.
func Render(flows []Flow) string {
	w := &strings.Builder{}
	for _, f := range flows {
		fmt.Fprintf(w, "\n# ── %s — sidecar %s\n", f.Title, f.Sidecar)
		for _, s := range f.Steps {
			fmt.Fprintf(w, "# %s\n", s.Comment)
			fmt.Fprintln(w, s.Command())
			if s.HTTP != nil {
				fmt.Fprintf(w, "#   %s\n", s.HTTP.expectation())
			}
			if s.Hint != "" {
				fmt.Fprintf(w, "#   watch it in another terminal: %s\n", s.Hint)
			}
		}
	}
	return w.String()
}
