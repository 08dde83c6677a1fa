// Package upstream is keygate's demo upstream: an HTTP service that answers
// every request with what it received — the method, the path and the identity
// headers a keygate sidecar adds (X-Keygate-*) — so that a user sees who the
// sidecar says the caller is. `make run` serves it behind one sidecar per
// sample policy; cmd/demo-upstream serves it as a container (hack/image).
package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"
)

// HeaderPrefix starts the names of the identity headers the sidecar adds.
const HeaderPrefix = "X-Keygate-"

// Echo is the JSON answer to every request.
type Echo struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	// Identity holds the X-Keygate-* request headers, by canonical name.
	Identity map[string]string `json:"identity"`
	// AuthorizationForwarded is true when an Authorization header reached the
	// upstream (a keygate sidecar removes it; the credential stays at the edge).
	AuthorizationForwarded bool `json:"authorizationForwarded"`
}

// Handler answers 200 with an Echo of the request, and repeats the identity
// headers as response headers (visible with curl -i). It never reads the body.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e := Echo{Method: r.Method, Path: r.URL.Path, Identity: map[string]string{},
			AuthorizationForwarded: r.Header.Get("Authorization") != ""}
		names := make([]string, 0, len(r.Header))
		for name := range r.Header {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if strings.HasPrefix(name, HeaderPrefix) {
				values := r.Header[name]
				e.Identity[name] = strings.Join(values, ",")
				w.Header()[name] = values
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if r.Method == http.MethodHead {
			return
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		// The status line is already out; a failed write is the client's going away.
		_ = enc.Encode(e)
	})
}

// Server returns an HTTP server for h with timeouts suited to a demo service.
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
	}
}

// Serve serves Handler on ln until ctx ends, then shuts down, giving requests
// in flight up to drain to finish.
func Serve(ctx context.Context, ln net.Listener, drain time.Duration) error {
	srv := Server(Handler())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
