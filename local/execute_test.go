package local

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/plugin/cli"
)

// executor runs printed steps the way a shell would, as HTTP requests and
// API calls, sharing the variables the steps capture.
type executor struct {
	t         *testing.T
	c         client.Client
	namespace string
	vars      map[string]string
	// statuses counts the HTTP statuses seen.
	statuses map[int]int
	// kubeconfig is the admin kubeconfig the plugin uses; pluginRuns counts its runs.
	kubeconfig string
	pluginRuns int
}

func newExecutor(t *testing.T, env *Env, namespace string) *executor {
	return &executor{t: t, c: env.Client, namespace: namespace, vars: map[string]string{}, statuses: map[int]int{}, kubeconfig: env.Kubeconfig}
}

// expand replaces $VAR references with captured values.
func (x *executor) expand(s string) (string, error) {
	var missing []string
	out := variable.ReplaceAllStringFunc(s, func(ref string) string {
		v, ok := x.vars[ref[1:]]
		if !ok {
			missing = append(missing, ref)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("undefined %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// run executes one step; an error says how the answer differed.
func (x *executor) run(ctx context.Context, s Step) error {
	switch {
	case s.HTTP != nil:
		if !s.HTTP.Eventually {
			return x.http(ctx, s.HTTP)
		}
		var err error
		if !waitFor(flowTimeout, func() bool { err = x.http(ctx, s.HTTP); return err == nil }) {
			return fmt.Errorf("not within %s: %w", flowTimeout, err)
		}
		return nil
	case s.Annotate != nil:
		return x.annotate(ctx, s.Annotate)
	case s.Wait != nil:
		return x.wait(ctx, s.Wait)
	case s.Plugin != nil:
		return x.plugin(s.Plugin)
	case s.ReadSecret != nil:
		sec := &corev1.Secret{}
		if err := x.c.Get(ctx, client.ObjectKey{Namespace: x.namespace, Name: s.ReadSecret.Secret}, sec); err != nil {
			return err
		}
		v, ok := sec.Data[s.ReadSecret.Key]
		if !ok || len(v) == 0 {
			return fmt.Errorf("secret %s has no %s", s.ReadSecret.Secret, s.ReadSecret.Key)
		}
		x.vars[s.ReadSecret.Var] = string(v)
		return nil
	}
	return fmt.Errorf("empty step %q", s.Comment)
}

func (x *executor) http(ctx context.Context, h *HTTPStep) error {
	body, err := x.expand(h.Body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, h.Method, h.URL, strings.NewReader(body))
	if err != nil {
		return err
	}
	if body == "" {
		req.Body = http.NoBody
	} else {
		// curl -d sends this type unless a header says otherwise.
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, kv := range h.Header {
		v, err := x.expand(kv[1])
		if err != nil {
			return err
		}
		req.Header.Set(kv[0], v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	x.statuses[resp.StatusCode]++
	if resp.StatusCode != h.Want.Status {
		return fmt.Errorf("status %d, want %d: %s", resp.StatusCode, h.Want.Status, raw)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("body is not a JSON object: %w: %s", err, raw)
	}
	for path, want := range h.Want.Equal {
		if got, ok := lookup(doc, path); !ok || fmt.Sprint(got) != want {
			return fmt.Errorf("%s = %v, want %s: %s", path, got, want, raw)
		}
	}
	for _, path := range h.Want.NonEmpty {
		if got, ok := lookup(doc, path); !ok || got == "" || got == nil || got == 0.0 {
			return fmt.Errorf("%s is empty: %s", path, raw)
		}
	}
	if c := h.Capture; c != nil {
		v, _ := lookup(doc, c.Field)
		s, ok := v.(string)
		if !ok || s == "" {
			return fmt.Errorf("no %s to keep: %s", c.Field, raw)
		}
		// What the printed sed extracts from the raw body must be the same.
		if !bytes.Contains(raw, []byte(`"`+c.Field+`":"`+s+`"`)) {
			return fmt.Errorf("the printed sed would not find %q in %s", c.Field, raw)
		}
		x.vars[c.Var] = s
	}
	return nil
}

// plugin runs kubectl keygate in process, as kubectl would with KUBECONFIG set.
func (x *executor) plugin(p *PluginStep) error {
	var out, errOut bytes.Buffer
	args := append(append([]string{}, p.Args...), "--kubeconfig", x.kubeconfig)
	code := cli.Run(args, &cli.Options{IO: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}})
	x.pluginRuns++
	if code != cli.ExitOK {
		return fmt.Errorf("kubectl keygate %s: exit %d\n%s%s", strings.Join(p.Args, " "), code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), LocalKey) {
		return fmt.Errorf("kubectl keygate %s does not name %s:\n%s", strings.Join(p.Args, " "), LocalKey, out.String())
	}
	return nil
}

// lookup follows a dotted path through JSON objects.
func lookup(doc map[string]any, path string) (any, bool) {
	var cur any = doc
	for _, part := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func (x *executor) annotate(ctx context.Context, a *AnnotateStep) error {
	value := strconv.FormatInt(time.Now().Unix(), 10) // $(date +%s)
	x.vars[a.Var] = value
	key := &keygatev1.ApiKey{}
	if err := x.c.Get(ctx, client.ObjectKey{Namespace: x.namespace, Name: a.ApiKey}, key); err != nil {
		return err
	}
	patch := client.MergeFrom(key.DeepCopy())
	if key.Annotations == nil {
		key.Annotations = map[string]string{}
	}
	key.Annotations[a.Key] = value
	return x.c.Patch(ctx, key, patch)
}

// wait is kubectl wait --for=jsonpath: the JSONPath evaluated on the object.
func (x *executor) wait(ctx context.Context, w *WaitStep) error {
	want, err := x.expand(w.Value)
	if err != nil {
		return err
	}
	jp := jsonpath.New("wait")
	if err := jp.Parse(w.JSONPath); err != nil {
		return err
	}
	var got string
	ok := waitFor(flowTimeout, func() bool {
		key := &keygatev1.ApiKey{}
		if x.c.Get(ctx, client.ObjectKey{Namespace: x.namespace, Name: w.ApiKey}, key) != nil {
			return false
		}
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(key)
		if err != nil {
			return false
		}
		var buf bytes.Buffer
		if jp.Execute(&buf, obj) != nil {
			return false
		}
		got = buf.String()
		return got == want
	})
	if !ok {
		return fmt.Errorf("%s of ApiKey %s is %q, want %q", w.JSONPath, w.ApiKey, got, want)
	}
	return nil
}
