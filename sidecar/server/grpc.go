package server

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// gRPC status codes of the sidecar's refusals (docs/sidecar.md, "gRPC").
const (
	grpcUnknown           = 2
	grpcInvalidArgument   = 3
	grpcResourceExhausted = 8
	grpcPermissionDenied  = 7
	grpcUnavailable       = 14
	grpcUnauthenticated   = 16
)

// grpcCode is the gRPC status of a refusal the sidecar answers with HTTP
// status code to other clients. The request's own fault (400) is
// INVALID_ARGUMENT, not the INTERNAL a client maps a bare HTTP 400 to: the
// call is malformed, not the server broken. Limits (429, and 413 like gRPC's
// own message size limit) are RESOURCE_EXHAUSTED, as gRPC servers answer
// quota refusals; a sidecar or upstream that cannot serve now (503, 502) is
// UNAVAILABLE, which gRPC clients may retry.
func grpcCode(code int) int {
	switch code {
	case http.StatusBadRequest:
		return grpcInvalidArgument
	case http.StatusUnauthorized:
		return grpcUnauthenticated
	case http.StatusForbidden:
		return grpcPermissionDenied
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return grpcResourceExhausted
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return grpcUnavailable
	default:
		return grpcUnknown
	}
}

// isGRPC reports a gRPC request (Content-Type application/grpc, +proto, ...).
func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") && (len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';')
}

// writeError answers a refusal: the JSON body with status code, or for a gRPC
// request the matching gRPC status with the same message.
func writeError(w http.ResponseWriter, r *http.Request, code int, body errorBody) {
	if r != nil && isGRPC(r) {
		writeGRPCStatus(w, grpcCode(code), body.Message)
		return
	}
	writeJSON(w, code, body)
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
