package authn

import (
	"encoding/base64"
	"strings"
	"testing"
)

func FuzzParseAuthorization(f *testing.F) {
	for _, s := range []string{
		"Basic " + base64.StdEncoding.EncodeToString([]byte("apk-1wtRxni5IsPsSpBLWpwr:FWtnOOHAjbD6rNxWWEeVOCj7JXSEPGJQ")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte("user:pa:ss")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte(":")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte("user:")),
		"basic cm9iY29tYXBpOnJvYmNvbTg4",
		"Basic cm9iY29tYXBpOnJvYmNvbTg4=",
		"Basic  x", "Basic", "Bearer", "Bearer eyJ.eyJ.sig", "EN ABCDEFG", "bearer a b", "", " ", "Digest x",
	} {
		f.Add(s)
	}
	isBearer := func(w string) bool { return strings.EqualFold(w, "Bearer") || strings.EqualFold(w, "EN") }
	f.Fuzz(func(t *testing.T, h string) {
		c, err := ParseAuthorization(h, isBearer)
		if err != nil {
			return
		}
		if c.Basic {
			if c.User == "" || c.Password == "" || strings.Contains(c.User, ":") {
				t.Fatalf("accepted empty or colon user: %+v", c)
			}
			raw, derr := base64.StdEncoding.DecodeString(h[strings.IndexByte(h, ' ')+1:])
			if derr != nil && !strings.Contains(h, "  ") {
				t.Fatalf("accepted bad base64 %q", h)
			}
			_ = raw
			return
		}
		if c.Token == "" || strings.ContainsAny(c.Token, " \t\r\n") || !isBearer(c.Scheme) {
			t.Fatalf("bad bearer parse %+v from %q", c, h)
		}
	})
}
