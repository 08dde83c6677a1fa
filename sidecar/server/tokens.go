package server

import (
	"net/http"
	"net/netip"
	"time"

	"github.com/keygate-dev/keygate/sidecar/authn"
	"github.com/keygate-dev/keygate/sidecar/config"
)

// The request state is the token endpoint's view of a call.

func (st *request) Runtime() *config.Runtime        { return st.rt }
func (st *request) Now() time.Time                  { return st.now }
func (st *request) ClientAddr() netip.Addr          { return st.addr }
func (st *request) Result() string                  { return st.result }
func (st *request) SetResult(result, reason string) { st.result, st.reason = result, reason }
func (st *request) SetReason(reason string)         { st.reason = reason }
func (st *request) SetIdentity(id *authn.Identity)  { st.identity = id }

// gate lends the token endpoint the chain's authentication, failure limits,
// token rate limit and metrics.
type gate struct{ s *Server }

func (g gate) Authenticate(w http.ResponseWriter, r *http.Request, oauth bool) *authn.Identity {
	return g.s.authenticate(w, r, state(r), oauth)
}

func (g gate) Blocked(w http.ResponseWriter, r *http.Request, keyID string) bool {
	st := state(r)
	if blocked, after := g.s.byAddr.Blocked(st.addrText, st.now); blocked {
		g.s.tooMany(w, r, st, after)
		return true
	}
	if blocked, after := g.s.byKey.Blocked(keyID, st.now); blocked {
		g.s.tooMany(w, r, st, after)
		return true
	}
	return false
}

func (g gate) Failed(r *http.Request, keyID string) {
	st := state(r)
	g.s.byAddr.Fail(st.addrText, st.now)
	g.s.byKey.Fail(keyID, st.now)
}

func (g gate) AllowToken(w http.ResponseWriter, r *http.Request, id *authn.Identity) bool {
	return g.s.allowToken(w, state(r), id)
}

func (g gate) TokenIssued(kind string) { g.s.opts.Metrics.tokenIssued(kind) }
func (g gate) TokenRevoked()           { g.s.opts.Metrics.tokenRevoked() }
