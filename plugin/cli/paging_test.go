package cli

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/rest"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// apikeyLists records the ApiKey List requests a command makes.
type apikeyLists struct {
	mu     sync.Mutex
	limits []string // the limit parameter of each, "" for none
}

func (l *apikeyLists) wrap(cfg *rest.Config) *rest.Config {
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(req *http.Request) (*http.Response, error) {
			if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/apikeys") {
				l.mu.Lock()
				l.limits = append(l.limits, req.URL.Query().Get("limit"))
				l.mu.Unlock()
			}
			return rt.RoundTrip(req)
		})
	})
	return cfg
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// TestListsArePaged: with 100,000 keys under one policy, no command may ask
// the API server for every key in one response. status, rotate -l, the
// "exists in namespace" hint and completion page through ApiKeys
// ListPageSize at a time, as kubectl get does, and still see every key.
func TestListsArePaged(t *testing.T) {
	ns := createNamespace(t, "paging")
	createPolicy(t, ns, "payments", keygatev1.TokenPolicySpec{})
	const n = 5
	for i := range n {
		createKey(t, ns, fmt.Sprintf("key-%d", i), keySpec("payments", "charges:List"))
	}
	var every []string
	for i := range n {
		every = append(every, fmt.Sprintf("key-%d", i))
	}
	for _, tc := range []struct {
		args []string
		want []string // in the output: what shows no page was lost
	}{
		{[]string{"status", "-n", ns}, every},
		{[]string{"status", "-p", "payments", "-n", ns}, []string{fmt.Sprintf("API keys:     %d ", n)}},
		{[]string{"credentials", "missing", "-n", ns}, nil}, // the "exists in namespace" hint lists cluster-wide
		{[]string{"__complete", "status", "-n", ns, "key-"}, every},
	} {
		args := tc.args
		t.Run(args[0]+" "+args[1], func(t *testing.T) {
			lists := &apikeyLists{}
			r := kgWith(t, func(o *Options) {
				o.ListPageSize = 2
				o.Flags.WrapConfigFn = lists.wrap
			}, args...)
			if tc.want != nil {
				wantCode(t, r, 0)
			}
			for _, want := range tc.want {
				if !strings.Contains(r.out, want) {
					t.Errorf("%v lacks %q (a page was lost):\n%s", args, want, r.out)
				}
			}
			lists.mu.Lock()
			defer lists.mu.Unlock()
			if len(lists.limits) == 0 {
				t.Fatalf("%v listed no ApiKeys", args)
			}
			for _, limit := range lists.limits {
				if limit != "2" {
					t.Errorf("%v: an ApiKey List with limit %q, want every one paged by 2: %q", args, limit, lists.limits)
				}
			}
		})
	}
}
