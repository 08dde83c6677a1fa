package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/revocation"
	"github.com/keygate-dev/keygate/sidecar/token"
)

type revokeOptions struct {
	*Options
	jti    string
	token  string
	policy string
}

func newRevokeCommand(root *Options) *cobra.Command {
	o := &revokeOptions{Options: root}
	cmd := &cobra.Command{
		Use:   "revoke (--jti ID | --token TOKEN) -p POLICY",
		Short: "Revoke a token on every sidecar of a policy",
		Long: `Add a token to the policy's revocations ConfigMap with the merge patch the
sidecars themselves send, so every replica (and every restarted one) refuses it.

--token verifies the token with the policy's signing keys first and records its
own expiry. --jti revokes by token ID; the entry is then kept for the policy's
longest token lifetime, which outlives any token with that ID.`,
		Example: `  kubectl keygate revoke -p payments-api --token "$TOKEN"
  kubectl keygate revoke -p payments-api --jti 01J9Z3K2V5B7X`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.policy == "" {
				return usagef("-p POLICY is required")
			}
			if (o.jti == "") == (o.token == "") {
				return usagef("give exactly one of --jti and --token")
			}
			if o.jti != "" && !token.ValidID(o.jti) {
				return usagef("--jti %q is not a token ID (1 to 128 of [-._a-zA-Z0-9])", o.jti)
			}
			return o.run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&o.jti, "jti", "", "ID (jti claim) of the token to revoke")
	cmd.Flags().StringVar(&o.token, "token", "", "the token to revoke")
	cmd.Flags().StringVarP(&o.policy, "policy", "p", "", "TokenPolicy whose sidecars issued the token")
	_ = cmd.RegisterFlagCompletionFunc("policy", root.completePolicies)
	return cmd
}

func (o *revokeOptions) run(ctx context.Context) error {
	s, err := o.connect()
	if err != nil {
		return err
	}
	if _, err := s.getPolicy(ctx, s.namespace, o.policy); err != nil {
		return err
	}
	b, err := s.readBundle(ctx, s.namespace, o.policy)
	if err != nil {
		return err
	}
	rt, err := config.CompileBundle(b)
	if err != nil {
		return fmt.Errorf("compile the bundle of TokenPolicy %q: %w", o.policy, err)
	}
	now := o.Now()
	jti := o.jti
	// Without the token, keep the entry as long as any token issued now lives.
	exp := now.Add(max(rt.TokenTTL, rt.ClientTokenTTL)).Truncate(time.Second)
	if o.token != "" {
		c, err := rt.Keyset.Verify(o.token, now)
		if err != nil {
			return fmt.Errorf("the token is not one the sidecars of TokenPolicy %q accept (nothing to revoke): %w", o.policy, err)
		}
		jti, exp = c.ID, c.Expiry.Time()
	}
	store := &revocation.ConfigMap{Client: s.core.CoreV1().RESTClient(), Namespace: s.namespace,
		Name: bundle.RevocationsConfigMapName(o.policy), Set: revocation.NewSet()}
	if err := store.Revoke(ctx, jti, exp); err != nil {
		return err
	}
	_, err = fmt.Fprintf(o.IO.Out, "token %s revoked on every sidecar of TokenPolicy %s (entry kept until %s)\n",
		jti, o.policy, exp.Add(bundle.TokenLeeway).UTC().Format(time.RFC3339))
	return err
}
