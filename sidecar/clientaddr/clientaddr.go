// Package clientaddr finds the address of the client behind a request: the
// socket peer, unless the peer is a trusted proxy, in which case
// X-Forwarded-For is walked from the right, skipping trusted proxies.
package clientaddr

import (
	"net/http"
	"net/netip"
	"strings"
)

// Resolver resolves client addresses. The zero value trusts no proxy.
type Resolver struct {
	Trusted []netip.Prefix
}

func (r *Resolver) trusted(a netip.Addr) bool {
	for _, p := range r.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Peer parses a RemoteAddr ("ip:port"), unmapping IPv4-mapped IPv6.
func Peer(remoteAddr string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		a, err2 := netip.ParseAddr(remoteAddr)
		if err2 != nil {
			return netip.Addr{}, false
		}
		return a.Unmap().WithZone(""), true
	}
	return ap.Addr().Unmap().WithZone(""), true
}

// Resolve returns the client address of req; ok is false when the peer
// address cannot be parsed or a trusted proxy forwarded garbage (fail closed).
func (r *Resolver) Resolve(req *http.Request) (netip.Addr, bool) {
	peer, ok := Peer(req.RemoteAddr)
	if !ok {
		return netip.Addr{}, false
	}
	if len(r.Trusted) == 0 || !r.trusted(peer) {
		return peer, true
	}
	values := req.Header.Values("X-Forwarded-For")
	addr := peer
	for i := len(values) - 1; i >= 0; i-- {
		parts := strings.Split(values[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			s := strings.TrimSpace(parts[j])
			if s == "" {
				continue
			}
			a, err := netip.ParseAddr(s)
			if err != nil {
				return netip.Addr{}, false
			}
			addr = a.Unmap().WithZone("")
			if !r.trusted(addr) {
				return addr, true
			}
		}
	}
	// Every hop was a trusted proxy: the leftmost one is the client.
	return addr, true
}

// Secure reports whether req reached the client over HTTPS: it came over
// TLS, or its socket peer is a trusted proxy and every X-Forwarded-Proto
// value it sent is "https" (a proxy that appends to a client's own header
// shows its "http" after the client's "https"). The header of any other peer
// is ignored: a client cannot claim HTTPS.
func (r *Resolver) Secure(req *http.Request) bool {
	if req.TLS != nil {
		return true
	}
	peer, ok := Peer(req.RemoteAddr)
	if !ok || len(r.Trusted) == 0 || !r.trusted(peer) {
		return false
	}
	values := req.Header.Values("X-Forwarded-Proto")
	if len(values) == 0 {
		return false
	}
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			if !strings.EqualFold(strings.TrimSpace(p), "https") {
				return false
			}
		}
	}
	return true
}

// Allowed reports whether a lies in every non-empty list of prefixes.
func Allowed(a netip.Addr, lists ...[]netip.Prefix) bool {
	for _, l := range lists {
		if len(l) == 0 {
			continue
		}
		in := false
		for _, p := range l {
			if p.Contains(a) {
				in = true
				break
			}
		}
		if !in {
			return false
		}
	}
	return true
}

// ParsePrefixes parses CIDR blocks, masked, IPv4-mapped unmapped.
func ParsePrefixes(cidrs []string) ([]netip.Prefix, error) {
	if len(cidrs) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, err
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Within reports whether every prefix of narrow lies inside some prefix of
// wide (an empty wide list allows anything).
func Within(narrow, wide []netip.Prefix) bool {
	if len(wide) == 0 {
		return true
	}
	for _, n := range narrow {
		ok := false
		for _, w := range wide {
			if w.Bits() <= n.Bits() && w.Contains(n.Addr()) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
