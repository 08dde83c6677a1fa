package tokenendpoint

import (
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// MaxBodySize bounds token-endpoint request bodies.
const MaxBodySize = 16 << 10

// oauthError is an RFC 6749 §5.2 error.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
	status      int
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

func invalidRequest(desc string) *oauthError {
	return &oauthError{Code: "invalid_request", Description: desc, status: http.StatusBadRequest}
}

// TokenRequest is a token-endpoint body, JSON or form-encoded.
type TokenRequest struct {
	GrantType    string
	APIKey       string
	Secret       string
	Username     string
	Password     string
	ClientID     string
	ClientSecret string
	ClientKey    string
	Action       string
	AccessToken  string
	Token        string
	Scope        string
	AllowedCIDRs []string
}

type jsonTokenRequest struct {
	GrantType    string          `json:"grant_type"`
	APIKey       string          `json:"apiKey"`
	Secret       string          `json:"secret"`
	Username     string          `json:"username"`
	Password     string          `json:"password"`
	ClientID     string          `json:"client_id"`
	ClientSecret string          `json:"client_secret"`
	ClientKey    string          `json:"clientKey"`
	Action       string          `json:"action"`
	AccessToken  string          `json:"access_token"`
	Token        string          `json:"token"`
	Scope        string          `json:"scope"`
	AllowedCIDRs json.RawMessage `json:"allowedCIDRs"`
}

// ParseTokenRequest decodes a body of the given Content-Type. Only JSON and
// form encoding are accepted; form parameters may not repeat (RFC 6749 §3.2).
func ParseTokenRequest(contentType string, body []byte) (*TokenRequest, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, invalidRequest("Content-Type must be application/json or application/x-www-form-urlencoded")
	}
	switch mt {
	case "application/json":
		var j jsonTokenRequest
		dec := json.NewDecoder(strings.NewReader(string(body)))
		if err := dec.Decode(&j); err != nil {
			return nil, invalidRequest("body is not a JSON object")
		}
		if dec.More() {
			return nil, invalidRequest("body holds more than one JSON value")
		}
		t := &TokenRequest{GrantType: j.GrantType, APIKey: j.APIKey, Secret: j.Secret, Username: j.Username,
			Password: j.Password, ClientID: j.ClientID, ClientSecret: j.ClientSecret, ClientKey: j.ClientKey,
			Action: j.Action, AccessToken: j.AccessToken, Token: j.Token, Scope: j.Scope}
		if len(j.AllowedCIDRs) > 0 && string(j.AllowedCIDRs) != "null" {
			var list []string
			var one string
			if err := json.Unmarshal(j.AllowedCIDRs, &list); err != nil {
				if err := json.Unmarshal(j.AllowedCIDRs, &one); err != nil {
					return nil, invalidRequest("allowedCIDRs must be a list of CIDR blocks")
				}
				list = splitList(one)
			}
			t.AllowedCIDRs = list
		}
		return t, nil
	case "application/x-www-form-urlencoded":
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, invalidRequest("body is not form-encoded")
		}
		for k, vals := range v {
			if len(vals) > 1 {
				return nil, invalidRequest("parameter " + k + " is repeated")
			}
		}
		return &TokenRequest{GrantType: v.Get("grant_type"), APIKey: v.Get("apiKey"), Secret: v.Get("secret"),
			Username: v.Get("username"), Password: v.Get("password"), ClientID: v.Get("client_id"),
			ClientSecret: v.Get("client_secret"), ClientKey: v.Get("clientKey"), Action: v.Get("action"),
			AccessToken: v.Get("access_token"), Token: v.Get("token"), Scope: v.Get("scope"),
			AllowedCIDRs: splitList(v.Get("allowedCIDRs"))}, nil
	}
	return nil, invalidRequest("Content-Type must be application/json or application/x-www-form-urlencoded")
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}
