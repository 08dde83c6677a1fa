package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/plugin/inspect"
)

// annotationTLSSecret makes the sidecar serve TLS (so pods/proxy uses https).
const annotationTLSSecret = "keygate.dev/tls-secret"

// defaultSidecarPort is the sidecar's port when keygate.dev/port is unset.
const defaultSidecarPort = 8443

type tokenOptions struct {
	*Options
	client string
	scopes []string
	output string
}

// tokenRequest is the token endpoint's JSON body (the api_key grant, or a
// client token request when ClientKey is set).
type tokenRequest struct {
	APIKey    string `json:"apiKey,omitempty"`
	Secret    string `json:"secret,omitempty"`
	ClientKey string `json:"clientKey,omitempty"`
	Scope     string `json:"scope,omitempty"`
}

// tokenResponse is the token endpoint's answer.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
	AuthHeader  string `json:"auth_header,omitempty"`
}

// poster sends one request to a sidecar's token endpoint.
type poster func(ctx context.Context, path string, header http.Header, body []byte) (status int, respBody []byte, err error)

func newTokenCommand(root *Options) *cobra.Command {
	o := &tokenOptions{Options: root}
	cmd := &cobra.Command{
		Use:   "token APIKEY [--client KEY] [--scope PERMISSION]...",
		Short: "Get a real token from a ready sidecar of the key's policy",
		Long: `Ask a ready sidecar pod of the key's TokenPolicy for a token, through the API
server's pods/proxy subresource (no port-forward, no network path from your
machine to the pod needed; you need get on pods/proxy). The key's credentials
are read from its Secret and sent in the request body; they are not printed.

--client asks for a client token of one of the key's clients. The API server
does not forward the Authorization header through pods/proxy, so this needs a
policy with authentication.apiKeyHeader set.`,
		Example: `  TOKEN=$(kubectl keygate token payments)
  kubectl keygate token payments --scope charges:List -o json
  kubectl keygate token payments --client acme-corp`,
		Args:              exactArgs(1, "one API key name"),
		ValidArgsFunction: root.completeKeys,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(o.output); err != nil {
				return err
			}
			return o.run(cmd.Context(), args[0])
		},
	}
	cmd.Flags().StringVar(&o.client, "client", "", "get a client token for this client of the key")
	cmd.Flags().StringSliceVar(&o.scopes, "scope", nil, "narrow the token to these permissions")
	addOutputFlag(cmd, &o.output)
	return cmd
}

func (o *tokenOptions) run(ctx context.Context, name string) error {
	s, err := o.connect()
	if err != nil {
		return err
	}
	key, err := s.getKey(ctx, s.namespace, name)
	if err != nil {
		return err
	}
	creds, err := s.readCredentials(ctx, s.namespace, name)
	if err != nil {
		return err
	}
	policy := key.Spec.PolicyRef.Name
	b, err := s.readBundle(ctx, s.namespace, policy)
	if err != nil {
		return err
	}
	if len(b.Policy.TokenPaths) == 0 {
		return fmt.Errorf("TokenPolicy %s/%s has no token endpoint paths", s.namespace, policy)
	}
	if o.client != "" && b.Policy.APIKeyHeader == "" {
		return fmt.Errorf("--client needs TokenPolicy %s/%s to set authentication.apiKeyHeader: the API server does not pass the Authorization header through pods/proxy", s.namespace, policy)
	}
	pod, err := s.readySidecar(ctx, s.namespace, policy)
	if err != nil {
		return err
	}
	req := tokenRequest{APIKey: creds.KeyID, Secret: creds.Secret, Scope: strings.Join(o.scopes, " ")}
	header := http.Header{"Content-Type": {"application/json"}}
	if o.client != "" {
		header.Set(b.Policy.APIKeyHeader, creds.KeyID+":"+creds.Secret)
		req = tokenRequest{ClientKey: o.client, Scope: req.Scope}
	}
	resp, err := exchange(ctx, s.podProxy(pod), b.Policy.TokenPaths[0], header, req)
	if err != nil {
		hint := ""
		if len(key.Spec.AllowedCIDRs) > 0 {
			hint = " (the key's allowedCIDRs apply to token requests too, and through pods/proxy the sidecar sees the API server's address)"
		}
		return fmt.Errorf("token from pod %s/%s: %w%s", pod.Namespace, pod.Name, err, hint)
	}
	if o.output != formatTable {
		return printStructured(o.IO.Out, o.output, resp)
	}
	_, err = fmt.Fprintln(o.IO.Out, resp.AccessToken)
	return err
}

// exchange posts req to a token endpoint and decodes the token, turning an
// OAuth error body into its message.
func exchange(ctx context.Context, post poster, path string, header http.Header, req tokenRequest) (*tokenResponse, error) {
	body, err := json.Marshal(req) // #nosec G117 -- the request body is where the token endpoint takes the credentials
	if err != nil {
		return nil, err
	}
	status, raw, err := post(ctx, path, header, body)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK && status != http.StatusCreated {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
			Message     string `json:"message"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			msg := e.Description
			if msg == "" {
				msg = e.Message
			}
			return nil, fmt.Errorf("the sidecar answered %d %s: %s", status, e.Error, msg)
		}
		return nil, fmt.Errorf("the sidecar answered %d", status)
	}
	out := &tokenResponse{}
	if err := json.Unmarshal(raw, out); err != nil || out.AccessToken == "" {
		return nil, fmt.Errorf("the sidecar's answer holds no token")
	}
	return out, nil
}

// readySidecar picks a ready pod of the policy, by name for a stable choice.
func (s *session) readySidecar(ctx context.Context, ns, policy string) (*corev1.Pod, error) {
	pods := &corev1.PodList{}
	if err := s.client.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels{keygatev1.LabelInject: "true"}); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	all := inspect.SidecarPods(pods.Items, policy)
	for i := range all {
		if inspect.SidecarReady(&all[i]) {
			return &all[i], nil
		}
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("no sidecar pod of TokenPolicy %q in namespace %q (pods labelled %s=true annotated %s=%s)",
			policy, ns, keygatev1.LabelInject, keygatev1.AnnotationPolicy, policy)
	}
	return nil, fmt.Errorf("no ready sidecar pod of TokenPolicy %q in namespace %q (%d pod(s), none ready)", policy, ns, len(all))
}

// podProxy posts to a pod through the API server's pods/proxy subresource.
func (s *session) podProxy(pod *corev1.Pod) poster {
	scheme := "http"
	if pod.Annotations[annotationTLSSecret] != "" {
		scheme = "https"
	}
	port := defaultSidecarPort
	if p, err := strconv.Atoi(pod.Annotations[keygatev1.AnnotationPort]); err == nil && p > 0 {
		port = p
	}
	target := fmt.Sprintf("%s:%s:%d", scheme, pod.Name, port)
	return func(ctx context.Context, path string, header http.Header, body []byte) (int, []byte, error) {
		req := s.core.CoreV1().RESTClient().Post().Namespace(pod.Namespace).Resource("pods").Name(target).
			SubResource("proxy").Suffix(path).Body(bytes.NewReader(body))
		for k, vs := range header {
			for _, v := range vs {
				req.SetHeader(k, v)
			}
		}
		var status int
		res := req.Do(ctx).StatusCode(&status)
		raw, err := res.Raw()
		if err != nil {
			// An error the API server made itself (no such pod, address
			// not allowed, forbidden) is a Status; the sidecar's are not.
			var se *apierrors.StatusError
			if errors.As(err, &se) && !isSidecarBody(raw) {
				return 0, nil, fmt.Errorf("API server pods/proxy: %w", err)
			}
		}
		return status, raw, nil
	}
}

// isSidecarBody tells a sidecar's JSON error from an API server Status.
func isSidecarBody(raw []byte) bool {
	var probe struct {
		Kind  string `json:"kind"`
		Error string `json:"error"`
	}
	return json.Unmarshal(raw, &probe) == nil && probe.Kind == "" && probe.Error != ""
}
