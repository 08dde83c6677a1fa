package server

import (
	"crypto/tls"
	"strings"
)

// HeaderClientCertSubject carries the subject of the client certificate the
// TLS listener verified (--tls-client-ca-file) to the workload; like every
// X-Keygate-* header it is removed from what clients send.
const HeaderClientCertSubject = "X-Keygate-Client-Cert-Subject"

// clientCertSubject is the RFC 4514 string of the verified client
// certificate's subject (Go's pkix.Name.String, most specific attribute
// first, e.g. "CN=billing,O=payments"), or "" without a verified certificate.
// Bytes outside printable ASCII are written as \XX hex pairs (RFC 4514
// §2.4), so the value is a valid header whatever the certificate holds.
func clientCertSubject(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	s := cs.VerifiedChains[0][0].Subject.String()
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			b.WriteByte('\\')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}
