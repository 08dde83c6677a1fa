package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/controllers"
	"github.com/keygate-dev/keygate/plugin/inspect"
)

type rotateOptions struct {
	*Options
	all      bool
	selector string
	wait     bool
	timeout  time.Duration
	output   string
}

// rotateResult is what rotate reports per key; never a secret.
type rotateResult struct {
	Namespace     string `json:"namespace"`
	Name          string `json:"name"`
	RotateRequest string `json:"rotateRequest"`
	// Waited results carry the new version and when the previous secret stops working.
	SecretVersion           int64      `json:"secretVersion,omitempty"`
	PreviousSecretExpiresAt *time.Time `json:"previousSecretExpiresAt,omitempty"`
	InBundle                bool       `json:"inBundle"`
}

func newRotateCommand(root *Options) *cobra.Command {
	o := &rotateOptions{Options: root}
	cmd := &cobra.Command{
		Use:   "rotate APIKEY... | --all [-l SELECTOR]",
		Short: "Rotate API key secrets (the keygate.dev/rotate annotation)",
		Long: `Request a new secret for each API key. The previous secret keeps working for
the key's rotation.gracePeriod (default 24h). With --wait, block until the
operator has rotated the key and the policy's bundle — what every sidecar
loads — carries the new secret, then print when the previous one stops working.
Never prints a secret: read the new one with 'kubectl keygate credentials'.`,
		Example: `  # Rotate one key and wait until sidecars accept the new secret
  kubectl keygate rotate payments --wait

  # Rotate every key labelled team=billing in the namespace
  kubectl keygate rotate --all -l team=billing`,
		ValidArgsFunction: root.completeKeys,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args)
		},
	}
	cmd.Flags().BoolVar(&o.all, "all", false, "rotate every ApiKey of the namespace (with -l: those matching)")
	cmd.Flags().StringVarP(&o.selector, "selector", "l", "", "label selector for --all")
	cmd.Flags().BoolVar(&o.wait, "wait", false, "wait until the new secret is in the policy's bundle")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long --wait waits")
	cmd.Flags().BoolVarP(&root.AllNamespaces, "all-namespaces", "A", false, "with --all, rotate keys of every namespace")
	addOutputFlag(cmd, &o.output)
	return cmd
}

func (o *rotateOptions) run(ctx context.Context, names []string) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	switch {
	case o.all && len(names) > 0:
		return usagef("give API key names or --all, not both")
	case !o.all && len(names) == 0:
		return usagef("give at least one API key name, or --all")
	case o.selector != "" && !o.all:
		return usagef("-l selects keys for --all only")
	case o.AllNamespaces && !o.all:
		return usagef("-A applies to --all only")
	}
	sel, err := labels.Parse(o.selector)
	if err != nil {
		return usageError{fmt.Errorf("invalid selector: %w", err)}
	}
	s, err := o.connect()
	if err != nil {
		return err
	}
	var keys []keygatev1.ApiKey
	if o.all {
		ns := s.namespace
		if o.AllNamespaces {
			ns = ""
		}
		if keys, err = s.listKeys(ctx, ns, sel); err != nil {
			return err
		}
		if len(keys) == 0 {
			return fmt.Errorf("no ApiKeys match in %s", describeScope(ns, o.selector))
		}
	} else {
		for _, n := range names {
			k, err := s.getKey(ctx, s.namespace, n)
			if err != nil {
				return err
			}
			keys = append(keys, *k)
		}
	}
	value := o.Now().UTC().Format(time.RFC3339Nano)
	results := make([]rotateResult, 0, len(keys))
	for i := range keys {
		k := &keys[i]
		patch := client.MergeFrom(k.DeepCopy())
		if k.Annotations == nil {
			k.Annotations = map[string]string{}
		}
		k.Annotations[keygatev1.AnnotationRotate] = value
		if err := s.client.Patch(ctx, k, patch); err != nil {
			return fmt.Errorf("request rotation of ApiKey %s/%s: %w", k.Namespace, k.Name, err)
		}
		results = append(results, rotateResult{Namespace: k.Namespace, Name: k.Name, RotateRequest: value})
		if !o.wait && o.output == formatTable {
			if _, err := fmt.Fprintf(o.IO.Out, "apikey/%s rotation requested (%s=%s)\n", k.Name, keygatev1.AnnotationRotate, value); err != nil {
				return err
			}
		}
	}
	if o.wait {
		for i := range results {
			if err := o.waitRotated(ctx, s, &results[i]); err != nil {
				return err
			}
			if o.output == formatTable {
				if err := o.printRotated(&results[i]); err != nil {
					return err
				}
			}
		}
	}
	if o.output != formatTable {
		return printStructured(o.IO.Out, o.output, results)
	}
	return nil
}

func describeScope(ns, selector string) string {
	where := "namespace " + ns
	if ns == "" {
		where = "any namespace"
	}
	if selector != "" {
		where += " with labels " + selector
	}
	return where
}

// waitRotated polls until the operator handled the request and the policy's
// bundle carries the key's new secret version.
func (o *rotateOptions) waitRotated(ctx context.Context, s *session, r *rotateResult) error {
	var last inspect.KeyStatus
	var handled bool
	bundles := &bundleCache{s: s}
	err := wait.PollUntilContextTimeout(ctx, o.PollInterval, o.timeout, true, func(ctx context.Context) (bool, error) {
		k, err := s.getKey(ctx, r.Namespace, r.Name)
		var missing keyNotFound
		if errors.As(err, &missing) {
			return false, err
		}
		if err != nil {
			return false, nil //nolint:nilerr // a failed read is retried until the timeout
		}
		handled = k.Status.LastRotateRequest == r.RotateRequest
		if !handled {
			return false, nil
		}
		bundles.m = nil // read afresh each time
		last = inspect.Key(k, bundles.get(ctx, k.Namespace, k.Spec.PolicyRef.Name), o.Now())
		if last.InBundle != inspect.InBundleYes {
			return false, nil
		}
		// The version matches; check the digest too, so "carries" means the
		// secret a consumer reads now is the one sidecars accept.
		sec := &corev1.Secret{}
		if err := s.client.Get(ctx, client.ObjectKey{Namespace: k.Namespace, Name: k.Status.SecretName}, sec); err != nil {
			return false, nil //nolint:nilerr // keep waiting: the Secret may lag
		}
		return inspect.CarriesSecret(bundles.get(ctx, k.Namespace, k.Spec.PolicyRef.Name), k.Status.KeyID, string(sec.Data[controllers.CredentialsSecret])), nil
	})
	if err == nil {
		r.SecretVersion, r.PreviousSecretExpiresAt, r.InBundle = last.SecretVersion, last.PreviousSecretExpiresAt, true
		return nil
	}
	if !wait.Interrupted(err) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	switch {
	case !handled:
		return fmt.Errorf("timed out after %s waiting for the operator to rotate ApiKey %s/%s (is the keygate manager running?)", o.timeout, r.Namespace, r.Name)
	case last.InBundle == inspect.InBundleUnknown:
		return fmt.Errorf("timed out after %s: ApiKey %s/%s has secret version %d, but the bundle of TokenPolicy %q cannot be read",
			o.timeout, r.Namespace, r.Name, last.SecretVersion, last.Policy)
	default:
		why := ""
		if last.Ready != "True" {
			why = fmt.Sprintf(" (the key is not Ready: %s)", last.Reason)
		}
		return fmt.Errorf("timed out after %s: ApiKey %s/%s has secret version %d, but the bundle of TokenPolicy %q carries %s%s",
			o.timeout, r.Namespace, r.Name, last.SecretVersion, last.Policy, bundleCarriage(last), why)
	}
}

func bundleCarriage(ks inspect.KeyStatus) string {
	if ks.InBundle == inspect.InBundleNo {
		return "no entry for it"
	}
	return fmt.Sprintf("version %d", ks.BundleVersion)
}

func (o *rotateOptions) printRotated(r *rotateResult) error {
	p := &printer{w: o.IO.Out}
	p.f("apikey/%s rotated: secret version %d is in the bundle of its policy\n", r.Name, r.SecretVersion)
	if t := r.PreviousSecretExpiresAt; t != nil {
		p.f("  previous secret works until %s (%s left)\n", t.UTC().Format(time.RFC3339), duration.HumanDuration(t.Sub(o.Now())))
	} else {
		p.f("%s\n", "  previous secret no longer works (grace period 0)")
	}
	p.f("  read the new secret: kubectl keygate credentials %s -n %s\n", r.Name, r.Namespace)
	return p.err
}
