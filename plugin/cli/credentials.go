package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/controllers"
)

// Formats of credentials --format.
const (
	credHeader = "header"
	credBasic  = "basic"
	credJSON   = "json"
	credEnv    = "env"
)

// credentials are what a consumer needs; the only secret the plugin prints.
type credentials struct {
	KeyID  string `json:"apiKey"`
	Secret string `json:"secret"`
	// Authorization is the ready Authorization header value (Basic).
	Authorization string `json:"-"`
}

func newCredentialsCommand(root *Options) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "credentials APIKEY",
		Short: "Print an API key's credentials (the only command that shows a secret)",
		Long: `Print the key ID and secret of an API key from its credentials Secret, in the
form a consumer pastes:

  header  Authorization: Basic base64(key:secret)
  basic   key:secret
  json    {"apiKey":"…","secret":"…"} (the token endpoint's request body)
  env     KEYGATE_KEY_ID=… and KEYGATE_SECRET=… lines

A warning goes to stderr when stdout is a terminal.`,
		Example: `  kubectl keygate credentials payments
  curl -H "$(kubectl keygate credentials payments)" https://payments.example.com/charges
  kubectl keygate credentials payments --format json | curl -d @- https://payments.example.com/api/token`,
		Args:              exactArgs(1, "one API key name"),
		ValidArgsFunction: root.completeKeys,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch format {
			case credHeader, credBasic, credJSON, credEnv:
			default:
				return usagef("unknown --format %q: use header, basic, json or env", format)
			}
			s, err := root.connect()
			if err != nil {
				return err
			}
			c, err := s.readCredentials(cmd.Context(), s.namespace, args[0])
			if err != nil {
				return err
			}
			if root.IsTerminal(root.IO.Out) {
				_, _ = fmt.Fprintf(root.IO.ErrOut, "Warning: this prints the secret of ApiKey %s/%s; it stays in your terminal's scrollback.\n", s.namespace, args[0])
			}
			out := root.IO.Out
			switch format {
			case credHeader:
				_, err = fmt.Fprintf(out, "Authorization: %s\n", c.Authorization)
			case credBasic:
				_, err = fmt.Fprintf(out, "%s:%s\n", c.KeyID, c.Secret)
			case credJSON:
				err = printStructured(out, formatJSON, c)
			case credEnv:
				_, err = fmt.Fprintf(out, "KEYGATE_KEY_ID=%s\nKEYGATE_SECRET=%s\n", c.KeyID, c.Secret)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", credHeader, "header, basic, json or env")
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{credHeader, credBasic, credJSON, credEnv}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// readCredentials reads the key's credentials Secret.
func (s *session) readCredentials(ctx context.Context, ns, name string) (*credentials, error) {
	key, err := s.getKey(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	secretName := key.Status.SecretName
	if secretName == "" {
		return nil, fmt.Errorf("ApiKey %s/%s has no credentials yet (status.secretName is empty: is the keygate manager running?)", ns, name)
	}
	sec := &corev1.Secret{}
	if err := s.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: secretName}, sec); err != nil {
		return nil, fmt.Errorf("read credentials Secret %s/%s: %w", ns, secretName, err)
	}
	c := &credentials{KeyID: string(sec.Data[controllers.CredentialsKeyID]), Secret: string(sec.Data[controllers.CredentialsSecret]),
		Authorization: string(sec.Data[controllers.CredentialsAuthorization])}
	if c.KeyID == "" || c.Secret == "" {
		return nil, fmt.Errorf("credentials Secret %s/%s has no %s or %s", ns, secretName, controllers.CredentialsKeyID, controllers.CredentialsSecret)
	}
	return c, nil
}
