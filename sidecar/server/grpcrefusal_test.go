package server

import (
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// TestGRPCRefusalShapes: every refusal of the chain, asked once as plain
// HTTP and once as gRPC (over h2): the gRPC answer is HTTP 200 with the
// documented grpc-status and the HTTP answer's message as grpc-message.
func TestGRPCRefusalShapes(t *testing.T) {
	grpcCT := []string{"Content-Type", "application/grpc+proto", "Te", "trailers"}
	newFix := func() *bundletest.Fixture {
		f := sidecartest.ChargesFixture()
		f.AddKey("apk-slow", []string{"charges:All"}, bundletest.WithRateLimit(1, time.Hour, 1))
		return f
	}
	cases := []struct {
		name     string
		fix      *bundletest.Fixture // nil: no bundle loaded
		opts     []harnessOption
		prepare  func(h *harness, headers []string) // requests that set the case up
		path     string
		auth     func(f *bundletest.Fixture) string
		httpCode int
		grpcCode int
	}{
		{name: "no bundle", httpCode: http.StatusServiceUnavailable, grpcCode: grpcUnavailable, path: "/pkg.Svc/Call"},
		{name: "unclean path", fix: newFix(), path: "/pkg.Svc/%2FCall", httpCode: http.StatusBadRequest, grpcCode: grpcInvalidArgument},
		{name: "failure limit", fix: newFix(), path: "/charges",
			opts: []harnessOption{func(o *Options) { o.FailureLimit = 1 }},
			prepare: func(h *harness, hd []string) {
				h.Do("POST", "/charges", "", append(hd, "Authorization", sidecartest.Basic("apk-lake", "wrong"))...)
			},
			auth:     func(f *bundletest.Fixture) string { return sidecartest.Basic("apk-lake", f.Secrets["apk-lake"]) },
			httpCode: http.StatusTooManyRequests, grpcCode: grpcResourceExhausted},
		{name: "rate limit", fix: newFix(), path: "/charges",
			prepare: func(h *harness, hd []string) {
				h.Do("POST", "/charges", "", append(hd, "Authorization", sidecartest.Basic("apk-slow", h.fix.Secrets["apk-slow"]))...)
			},
			auth:     func(f *bundletest.Fixture) string { return sidecartest.Basic("apk-slow", f.Secrets["apk-slow"]) },
			httpCode: http.StatusTooManyRequests, grpcCode: grpcResourceExhausted},
		{name: "upstream down", fix: newFix(), path: "/charges",
			opts:     []harnessOption{func(o *Options) { o.Upstream = &url.URL{Scheme: "http", Host: failingUpstream(t)} }},
			auth:     func(f *bundletest.Fixture) string { return sidecartest.Basic("apk-other", f.Secrets["apk-other"]) },
			httpCode: http.StatusBadGateway, grpcCode: grpcUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ask := func(headers []string) sidecartest.Response {
				fix := tc.fix
				if fix != nil {
					fix = newFix() // a fresh fixture and server for each protocol
				}
				h := newHarness(t, fix, tc.opts...)
				h2Front(t, h)
				if tc.prepare != nil {
					tc.prepare(h, headers)
				}
				if tc.auth != nil {
					headers = append(headers, "Authorization", tc.auth(h.fix))
				}
				return h.Do("POST", tc.path, "", headers...)
			}
			plain := ask(nil)
			if plain.Status != tc.httpCode {
				t.Fatalf("HTTP: %d %s, want %d", plain.Status, plain.Body, tc.httpCode)
			}
			msg, _ := plain.JSON(t)["message"].(string)
			g := ask(grpcCT)
			if g.Status != http.StatusOK || g.Header.Get("Content-Type") != "application/grpc" || len(g.Body) != 0 {
				t.Fatalf("gRPC: %d %v %q, want a Trailers-Only 200", g.Status, g.Header, g.Body)
			}
			if got := g.Header.Get("Grpc-Status"); got != strconv.Itoa(tc.grpcCode) {
				t.Fatalf("grpc-status %s, want %d (HTTP %d)", got, tc.grpcCode, tc.httpCode)
			}
			if m, err := url.PathUnescape(g.Header.Get("Grpc-Message")); err != nil || m != msg || msg == "" {
				t.Fatalf("grpc-message %q, want the HTTP message %q", g.Header.Get("Grpc-Message"), msg)
			}
		})
	}
}

// failingUpstream is a loopback address whose connections are closed as
// soon as they are accepted: every proxied request fails.
func failingUpstream(t *testing.T) string {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	return ln.Addr().String()
}
