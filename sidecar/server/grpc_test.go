package server

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
)

// basicCreds sends HTTP Basic credentials with every call.
type basicCreds struct{ user, pass string }

func (c basicCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(c.user+":"+c.pass))}, nil
}
func (basicCreds) RequireTransportSecurity() bool { return true }

// TestGRPCThroughTheSidecar: a real gRPC client speaks h2 over TLS to the
// sidecar's chain, which proxies over h2c (UpstreamH2C) to a real gRPC
// health server: unary and server-streaming calls with trailers, and the
// refusals reach the client as gRPC status codes.
func TestGRPCThroughTheSidecar(t *testing.T) {
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("payments", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{
		{Paths: []string{"/grpc.health.v1.Health/Check"}, Permission: "health:Check"},
		{Paths: []string{"/grpc.health.v1.Health/Watch"}, Permission: "health:Watch"},
	}
	f.AddKey("apk-both", []string{"health:Check", "health:Watch"})
	f.AddKey("apk-check", []string{"health:Check"})
	store := &config.Store{}
	if _, err := store.Update(f.JSON()); err != nil {
		t.Fatal(err)
	}
	srv := New(Options{Store: store, Upstream: &url.URL{Scheme: "http", Host: ln.Addr().String()}, UpstreamH2C: true,
		Metrics: NewMetrics(store), FailureLimit: 1000, Log: slog.New(slog.DiscardHandler)})
	front := httptest.NewUnstartedServer(srv.Handler())
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)
	roots := front.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs

	dial := func(creds *basicCreds) healthpb.HealthClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "example.com"}))}
		if creds != nil {
			opts = append(opts, grpc.WithPerRPCCredentials(*creds))
		}
		conn, err := grpc.NewClient(front.Listener.Addr().String(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return healthpb.NewHealthClient(conn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	both := dial(&basicCreds{"apk-both", f.Secrets["apk-both"]})
	resp, err := both.Check(ctx, &healthpb.HealthCheckRequest{Service: "payments"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("allowed Check: %v %v", resp, err)
	}
	// A status from the server's trailers passes through.
	if _, err := both.Check(ctx, &healthpb.HealthCheckRequest{Service: "unknown"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service: %v, want NotFound from the upstream's trailers", err)
	}
	// Server streaming: the first message, then an update pushed later.
	stream, err := both.Watch(ctx, &healthpb.HealthCheckRequest{Service: "payments"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message: %v %v", m, err)
	}
	hs.SetServingStatus("payments", healthpb.HealthCheckResponse_NOT_SERVING)
	if m, err := stream.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("streamed update: %v %v", m, err)
	}

	// Refusals: no credentials, a missing permission.
	// gRPC-shaped refusals: the status and the HTTP 401's generic wording,
	// the 403's permission.
	if _, err := dial(nil).Check(ctx, &healthpb.HealthCheckRequest{Service: "payments"}); status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != "authentication required" {
		t.Fatalf("Check without credentials: %v, want Unauthenticated", err)
	}
	checkOnly := dial(&basicCreds{"apk-check", f.Secrets["apk-check"]})
	s2, err := checkOnly.Watch(ctx, &healthpb.HealthCheckRequest{Service: "payments"})
	if err == nil {
		_, err = s2.Recv()
	}
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "missing permission health:Watch" {
		t.Fatalf("Watch without health:Watch: %v, want PermissionDenied", err)
	}
}
