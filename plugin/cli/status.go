package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/plugin/inspect"
)

type statusOptions struct {
	*Options
	policy string
	output string
}

func newStatusCommand(root *Options) *cobra.Command {
	o := &statusOptions{Options: root}
	cmd := &cobra.Command{
		Use:   "status [APIKEY | -p POLICY]",
		Short: "Show API keys (or a token policy) as the sidecars see them",
		Long: `Without arguments, one line per API key of the namespace (-A: of every
namespace): policy, Ready and reason, key ID, secret version, last rotation,
grace left on the previous secret, expiry, and whether the policy's bundle —
what every sidecar loads — carries the key's current secret.

With -p POLICY: the policy's signing keys (kid, algorithm, age, retiring), its
key count against maxApiKeys, revocations in force, and its sidecar pods.`,
		Example: `  kubectl keygate status
  kubectl keygate status payments -o yaml
  kubectl keygate status -p payments-api
  kubectl keygate status -A`,
		ValidArgsFunction: root.completeKeys,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("give at most one API key")
			}
			if err := checkOutput(o.output); err != nil {
				return err
			}
			if o.policy != "" {
				if len(args) > 0 || o.AllNamespaces {
					return usagef("-p shows one policy: give no API key and no -A")
				}
				return o.runPolicy(cmd.Context())
			}
			return o.runKeys(cmd.Context(), args)
		},
	}
	cmd.Flags().StringVarP(&o.policy, "policy", "p", "", "show this TokenPolicy instead of keys")
	cmd.Flags().BoolVarP(&root.AllNamespaces, "all-namespaces", "A", false, "list keys of every namespace")
	_ = cmd.RegisterFlagCompletionFunc("policy", root.completePolicies)
	addOutputFlag(cmd, &o.output)
	return cmd
}

func (o *statusOptions) runKeys(ctx context.Context, names []string) error {
	s, err := o.connect()
	if err != nil {
		return err
	}
	var keys []keygatev1.ApiKey
	switch {
	case len(names) == 1:
		k, err := s.getKey(ctx, s.namespace, names[0])
		if err != nil {
			return err
		}
		keys = []keygatev1.ApiKey{*k}
	case o.AllNamespaces:
		keys, err = s.listKeys(ctx, "", labels.Everything())
	default:
		keys, err = s.listKeys(ctx, s.namespace, labels.Everything())
	}
	if err != nil {
		return err
	}
	now := o.Now()
	bundles := &bundleCache{s: s}
	rows := make([]inspect.KeyStatus, 0, len(keys))
	for i := range keys {
		k := &keys[i]
		rows = append(rows, inspect.Key(k, bundles.get(ctx, k.Namespace, k.Spec.PolicyRef.Name), now))
	}
	if o.output != formatTable {
		if len(names) == 1 {
			return printStructured(o.IO.Out, o.output, rows[0])
		}
		return printStructured(o.IO.Out, o.output, rows)
	}
	if len(rows) == 0 {
		ns := s.namespace
		if o.AllNamespaces {
			ns = ""
		}
		_, _ = fmt.Fprintf(o.IO.ErrOut, "No ApiKeys found in %s.\n", describeScope(ns, ""))
		return nil
	}
	t := newTable(o.IO.Out)
	head := []any{"NAME", "POLICY", "READY", "REASON", "KEY ID", "VERSION", "ROTATED", "GRACE LEFT", "EXPIRES", "IN BUNDLE"}
	if o.AllNamespaces {
		head = append([]any{"NAMESPACE"}, head...)
	}
	t.row(head...)
	for _, r := range rows {
		cols := []any{r.Name, r.Policy, r.Ready, dash(r.Reason), dash(r.KeyID), r.SecretVersion,
			ago(r.LastRotation, now), graceLeft(r), until(r.ExpiresAt, now), r.InBundle}
		if o.AllNamespaces {
			cols = append([]any{r.Namespace}, cols...)
		}
		t.row(cols...)
	}
	return t.flush()
}

func (o *statusOptions) runPolicy(ctx context.Context) error {
	s, err := o.connect()
	if err != nil {
		return err
	}
	p, err := s.getPolicy(ctx, s.namespace, o.policy)
	if err != nil {
		return err
	}
	b, bundleErr := s.readBundle(ctx, p.Namespace, p.Name)
	keys, err := s.listKeys(ctx, p.Namespace, labels.Everything())
	if err != nil {
		return err
	}
	n := 0
	for _, k := range keys {
		if k.Spec.PolicyRef.Name == p.Name {
			n++
		}
	}
	cm := &corev1.ConfigMap{}
	if err := s.client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: bundle.RevocationsConfigMapName(p.Name)}, cm); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("read revocations ConfigMap: %w", err)
	}
	pods := &corev1.PodList{}
	if err := s.client.List(ctx, pods, client.InNamespace(p.Namespace), client.MatchingLabels{keygatev1.LabelInject: "true"}); err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	now := o.Now()
	ps := inspect.Policy(p, b, n, cm.Data, pods.Items, now)
	if o.output != formatTable {
		return printStructured(o.IO.Out, o.output, ps)
	}
	w := o.IO.Out
	out := &printer{w: w}
	out.f("TokenPolicy %s/%s: Ready=%s", ps.Namespace, ps.Name, ps.Ready)
	if ps.Reason != "" {
		out.f(" (%s)", ps.Reason)
	}
	out.f("\n")
	limit := "no limit"
	if ps.MaxApiKeys > 0 {
		limit = fmt.Sprintf("maxApiKeys %d", ps.MaxApiKeys)
	}
	out.f("API keys:     %d (%s); %d in the bundle\n", ps.ApiKeys, limit, ps.BundleKeys)
	out.f("Revocations:  %d in force\n", ps.Revocations)
	if bundleErr != nil {
		out.f("Bundle:       %v\n", bundleErr)
	}
	out.f("\nSigning keys:\n")
	t := newTable(w)
	t.row("  KID", "ALG", "AGE", "STATE")
	for _, k := range ps.SigningKeys {
		state := "current"
		if !k.Current {
			state = "retiring " + until(k.RetiresAt, now)
		}
		t.row("  "+k.KeyID, k.Algorithm, duration.HumanDuration(k.Age), state)
	}
	if err := t.flush(); err != nil {
		return err
	}
	out.f("\nSidecar pods:\n")
	if len(ps.Sidecars) == 0 {
		out.f("  none (pods labelled %s=true with %s=%s)\n", keygatev1.LabelInject, keygatev1.AnnotationPolicy, ps.Name)
		return out.err
	}
	t = newTable(w)
	t.row("  POD", "READY", "PHASE")
	for _, sc := range ps.Sidecars {
		t.row("  "+sc.Pod, sc.Ready, sc.Phase)
	}
	return errors.Join(out.err, t.flush())
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return duration.HumanDuration(now.Sub(*t)) + " ago"
}

func until(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	if !t.After(now) {
		return "expired"
	}
	return "in " + duration.HumanDuration(t.Sub(now))
}

func graceLeft(r inspect.KeyStatus) string {
	if r.GraceLeft <= 0 {
		return "-"
	}
	return duration.HumanDuration(r.GraceLeft)
}
