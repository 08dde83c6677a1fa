package clientaddr

import (
	"crypto/tls"
	"net/http"
	"net/netip"
	"testing"
)

func TestResolve(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tc := range []struct {
		name, remote string
		xff          []string
		trusted      []netip.Prefix
		want         string
		ok           bool
	}{
		{"peer", "192.0.2.1:5", nil, nil, "192.0.2.1", true},
		{"IPv4-mapped peer is unmapped", "[::ffff:192.0.2.1]:5", nil, nil, "192.0.2.1", true},
		{"IPv6 peer", "[2001:db8::1]:5", nil, nil, "2001:db8::1", true},
		{"XFF ignored without trusted proxies", "192.0.2.1:5", []string{"1.2.3.4"}, nil, "192.0.2.1", true},
		{"XFF ignored from an untrusted peer", "192.0.2.1:5", []string{"1.2.3.4"}, trusted, "192.0.2.1", true},
		{"XFF from a trusted peer", "10.0.0.1:5", []string{"1.2.3.4"}, trusted, "1.2.3.4", true},
		{"rightmost untrusted wins", "10.0.0.1:5", []string{"6.6.6.6, 1.2.3.4, 10.0.0.2"}, trusted, "1.2.3.4", true},
		{"several XFF headers", "10.0.0.1:5", []string{"6.6.6.6", "1.2.3.4"}, trusted, "1.2.3.4", true},
		{"mapped XFF entry", "10.0.0.1:5", []string{"::ffff:1.2.3.4"}, trusted, "1.2.3.4", true},
		{"garbage XFF fails closed", "10.0.0.1:5", []string{"nope"}, trusted, "", false},
		{"all trusted: leftmost", "10.0.0.1:5", []string{"10.0.0.3, 10.0.0.2"}, trusted, "10.0.0.3", true},
		{"bad peer", "nonsense", nil, nil, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tc.remote, Header: http.Header{}}
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			got, ok := (&Resolver{Trusted: tc.trusted}).Resolve(r)
			if ok != tc.ok || (ok && got.String() != tc.want) {
				t.Fatalf("got %v %v, want %s %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestAllowedAndWithin(t *testing.T) {
	a := netip.MustParseAddr("185.184.111.39")
	p := func(s ...string) []netip.Prefix { l, _ := ParsePrefixes(s); return l }
	if !Allowed(a, nil, p("185.184.111.39/32"), p("185.184.0.0/16")) || Allowed(a, p("102.177.115.120/29")) {
		t.Fatal("Allowed")
	}
	if !Within(p("10.1.0.0/16"), p("10.0.0.0/8")) || Within(p("0.0.0.0/0"), p("10.0.0.0/8")) || !Within(p("1.2.3.4/32"), nil) {
		t.Fatal("Within")
	}
	if l := p("::ffff:10.0.0.0/104"); l[0].String() != "10.0.0.0/8" {
		t.Fatalf("mapped prefix: %v", l)
	}
}

func TestSecure(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tc := range []struct {
		name, remote string
		tls          bool
		proto        []string
		trusted      []netip.Prefix
		want         bool
	}{
		{"TLS", "192.0.2.1:5", true, nil, nil, true},
		{"plain", "192.0.2.1:5", false, nil, nil, false},
		{"header without trusted proxies", "10.0.0.1:5", false, []string{"https"}, nil, false},
		{"header from an untrusted peer", "192.0.2.1:5", false, []string{"https"}, trusted, false},
		{"trusted peer, https", "10.0.0.1:5", false, []string{"https"}, trusted, true},
		{"trusted IPv4-mapped peer", "[::ffff:10.0.0.1]:5", false, []string{"HTTPS"}, trusted, true},
		{"trusted peer, no header", "10.0.0.1:5", false, nil, trusted, false},
		{"trusted peer, http", "10.0.0.1:5", false, []string{"http"}, trusted, false},
		{"appended http", "10.0.0.1:5", false, []string{"https, http"}, trusted, false},
		{"every hop https", "10.0.0.1:5", false, []string{"https,https", "https"}, trusted, true},
		{"empty value", "10.0.0.1:5", false, []string{""}, trusted, false},
		{"bad peer", "nonsense", false, []string{"https"}, trusted, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &http.Request{RemoteAddr: tc.remote, Header: http.Header{}}
			if tc.tls {
				req.TLS = &tls.ConnectionState{}
			}
			for _, v := range tc.proto {
				req.Header.Add("X-Forwarded-Proto", v)
			}
			r := &Resolver{Trusted: tc.trusted}
			if got := r.Secure(req); got != tc.want {
				t.Fatalf("Secure = %v, want %v", got, tc.want)
			}
		})
	}
}
