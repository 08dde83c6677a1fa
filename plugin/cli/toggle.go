package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// newToggleCommand builds disable (disabled=true) or enable (false).
func newToggleCommand(root *Options, verb string, disabled bool) *cobra.Command {
	effect := "The key leaves the policy's bundle: every sidecar refuses it (and tokens it got) until it is enabled again."
	if !disabled {
		effect = "The key returns to the policy's bundle with its current secret."
	}
	return &cobra.Command{
		Use:               verb + " APIKEY",
		Short:             fmt.Sprintf("Set spec.disabled=%t on an API key", disabled),
		Long:              fmt.Sprintf("Set spec.disabled=%t on an API key with a merge patch. %s", disabled, effect),
		Example:           fmt.Sprintf("  kubectl keygate %s payments -n shop", verb),
		Args:              exactArgs(1, "one API key name"),
		ValidArgsFunction: root.completeKeys,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := root.connect()
			if err != nil {
				return err
			}
			key, err := s.getKey(cmd.Context(), s.namespace, args[0])
			if err != nil {
				return err
			}
			if key.Spec.Disabled == disabled {
				_, err = fmt.Fprintf(root.IO.Out, "apikey/%s already %sd\n", key.Name, verb)
				return err
			}
			patch := client.MergeFrom(key.DeepCopy())
			key.Spec.Disabled = disabled
			if err := s.client.Patch(cmd.Context(), key, patch); err != nil {
				return fmt.Errorf("%s ApiKey %s/%s: %w", verb, key.Namespace, key.Name, err)
			}
			_, err = fmt.Fprintf(root.IO.Out, "apikey/%s %sd\n", key.Name, verb)
			return err
		},
	}
}
