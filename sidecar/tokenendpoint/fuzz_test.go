package tokenendpoint

import (
	"errors"
	"testing"
)

func FuzzParseTokenRequest(f *testing.F) {
	for _, s := range []struct{ ct, body string }{
		{"application/json", `{"apiKey":"apk-1","secret":"s"}`},
		{"application/json", `{"clientKey":"acme"}`},
		{"application/json", `{"action":"revoke","access_token":"a.b.c"}`},
		{"application/json", `{"grant_type":"password","username":"u","password":"p"}`},
		{"application/json", `{"grant_type":"client_credentials","scope":"a:B c:D","allowedCIDRs":["10.0.0.0/8"]}`},
		{"application/json", `{"allowedCIDRs":"10.0.0.0/8, 192.168.0.0/16"}`},
		{"application/json; charset=utf-8", `{} {}`},
		{"application/x-www-form-urlencoded", "grant_type=password&username=apiuser1&password=mypass1"},
		{"application/x-www-form-urlencoded", "grant_type=client_credentials&client_id=a&client_id=b"},
		{"application/x-www-form-urlencoded", "token=%zz"},
		{"text/plain", "x"},
		{"", ""},
	} {
		f.Add(s.ct, s.body)
	}
	f.Fuzz(func(t *testing.T, ct, body string) {
		tr, err := ParseTokenRequest(ct, []byte(body))
		if err != nil {
			// readBody finds the *oauthError with errors.As and writes it.
			var oe *oauthError
			if !errors.As(err, &oe) || oe == nil {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if tr == nil {
			t.Fatal("nil request without error")
		}
	})
}
