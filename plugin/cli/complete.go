package cli

import (
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// completeKeys completes the first argument with the namespace's ApiKeys.
func (o *Options) completeKeys(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 && cmd.Name() != "rotate" {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	s, err := o.connect()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	err = s.eachKeyPage(cmd.Context(), func(keys []keygatev1.ApiKey) {
		for _, k := range keys {
			if strings.HasPrefix(k.Name, toComplete) {
				names = append(names, k.Name)
			}
		}
	}, client.InNamespace(s.namespace))
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// completePolicies completes -p with the namespace's TokenPolicies.
func (o *Options) completePolicies(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
	s, err := o.connect()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	list := &keygatev1.TokenPolicyList{}
	if err := s.client.List(cmd.Context(), list, client.InNamespace(s.namespace)); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	names := make([]string, 0, len(list.Items))
	for _, p := range list.Items {
		names = append(names, p.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
