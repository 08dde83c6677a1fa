package server

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// gRPC status codes of the sidecar's refusals.
const (
	grpcPermissionDenied = 7
	grpcUnauthenticated  = 16
)

// isGRPC reports a gRPC request (Content-Type application/grpc, +proto, ...).
func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") && (len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';')
}

// writeGRPCStatus answers a gRPC request with a Trailers-Only response: HTTP
// 200, grpc-status and grpc-message (percent-encoded) in the headers.
func writeGRPCStatus(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	h.Set("Grpc-Message", strings.ReplaceAll(url.PathEscape(msg), "%20", " "))
	w.WriteHeader(http.StatusOK)
}
