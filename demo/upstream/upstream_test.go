package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestHandlerEchoesIdentity(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	tests := []struct {
		name    string
		method  string
		headers map[string]string
		want    Echo
	}{
		{
			name:   "identity headers",
			method: http.MethodPost,
			headers: map[string]string{
				"X-Keygate-Key-Id":      "apk-1",
				"X-Keygate-Permissions": "charges:List reports:All",
				"X-Other":               "not echoed",
			},
			want: Echo{Method: http.MethodPost, Path: "/charges/ch_1",
				Identity: map[string]string{"X-Keygate-Key-Id": "apk-1", "X-Keygate-Permissions": "charges:List reports:All"}},
		},
		{
			name:    "no identity, an Authorization header is reported",
			method:  http.MethodGet,
			headers: map[string]string{"Authorization": "Basic eDp5"},
			want:    Echo{Method: http.MethodGet, Path: "/charges/ch_1", Identity: map[string]string{}, AuthorizationForwarded: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tt.method, srv.URL+"/charges/ch_1?x=1", nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = resp.Body.Close() }()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			var got Echo
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if got.Method != tt.want.Method || got.Path != tt.want.Path || got.AuthorizationForwarded != tt.want.AuthorizationForwarded {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if len(got.Identity) != len(tt.want.Identity) {
				t.Errorf("identity %v, want %v", got.Identity, tt.want.Identity)
			}
			for k, v := range tt.want.Identity {
				if got.Identity[k] != v {
					t.Errorf("identity[%s] = %q, want %q", k, got.Identity[k], v)
				}
				if resp.Header.Get(k) != v {
					t.Errorf("response header %s = %q, want %q", k, resp.Header.Get(k), v)
				}
			}
		})
	}
}

func TestServeStopsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, time.Second) }()

	resp, err := http.Get("http://" + addr + "/healthz") //nolint:noctx // loopback probe
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the context ended")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		_ = c.Close()
		t.Fatalf("%s still accepts connections", addr)
	}
}
