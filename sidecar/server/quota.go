package server

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/quota"
)

// Bucket kinds: a key's (or client's) requests, and its token requests,
// which count apart so that minting tokens neither spends nor escapes the
// request budget.
const (
	bucketRequests = "r\x00"
	bucketTokens   = "t\x00"
)

// limitOf is the request limit of an identity and the subject of its bucket:
// the client's own limit in the client's bucket, else the key's (or the
// policy's) in the key's bucket. An off limit (not Valid) means no limit.
func limitOf(rt *config.Runtime, id *authn.Identity) (quota.Limit, string) {
	k := rt.Key(id.KeyID)
	if k == nil {
		return quota.Limit{}, ""
	}
	if id.Client != "" {
		if c := k.Clients[id.Client]; c != nil && c.RateLimit.Valid() {
			return c.RateLimit, bucketRequests + id.KeyID + "\x00" + id.Client
		}
	}
	l := rt.KeyLimit(k)
	if !l.Valid() {
		return quota.Limit{}, "" // no limit: no bucket name to build
	}
	return l, bucketRequests + id.KeyID
}

// withRateLimit spends one request of the caller's bucket; over the limit it
// answers 429 (forwarded with a deny decision under Audit).
func (s *Server) withRateLimit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := state(r)
		limit, subject := limitOf(st.rt, st.identity)
		if limit.Valid() {
			if res := s.quotas.Take(subject, limit, st.now); !res.Allowed {
				s.opts.Metrics.rateLimited(st.rt.Policy.Name, st.identity.KeyID)
				if s.auditDeny(w, r, st, auditRateLimited) {
					return
				}
				s.overLimit(w, r, st, limit, res, false)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// allowToken spends one token request of the key's token bucket; over the
// limit it answers 429 in the token endpoint's error shape and returns false.
func (s *Server) allowToken(w http.ResponseWriter, st *request, id *authn.Identity) bool {
	k := st.rt.Key(id.KeyID)
	if k == nil || !st.rt.KeyLimit(k).Valid() {
		return true
	}
	l := st.rt.KeyLimit(k)
	res := s.quotas.Take(bucketTokens+id.KeyID, l, st.now)
	if res.Allowed {
		return true
	}
	s.opts.Metrics.rateLimited(st.rt.Policy.Name, id.KeyID)
	s.overLimit(w, nil, st, l, res, true)
	return false
}

// overLimit writes the 429: Retry-After (whole seconds, rounded up) and the
// RateLimit-Policy and RateLimit fields of draft-ietf-httpapi-ratelimit-headers
// (quota q per window w seconds; r remaining, t seconds until a request is
// allowed again).
func (s *Server) overLimit(w http.ResponseWriter, r *http.Request, st *request, l quota.Limit, res quota.Result, oauth bool) {
	st.result, st.reason = "throttled", "rate_limit"
	retry := ceilSeconds(res.RetryAfter)
	h := w.Header()
	h.Set("Retry-After", strconv.FormatInt(retry, 10))
	h.Set("RateLimit-Policy", `"keygate";q=`+strconv.FormatInt(l.Requests, 10)+";w="+strconv.FormatInt(ceilSeconds(l.Per), 10))
	h.Set("RateLimit", `"keygate";r=0;t=`+strconv.FormatInt(retry, 10))
	if oauth {
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "slow_down", "error_description": "too many token requests for this key"})
		return
	}
	writeError(w, r, http.StatusTooManyRequests, errorBody{Error: "too_many_requests", Message: "rate limit exceeded"})
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(math.Ceil(d.Seconds()))
}
