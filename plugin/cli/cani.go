package cli

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/decision"
	"github.com/keygate-dev/keygate/sidecar/tokenendpoint"
)

// sidecarPaths are the reserved paths a sidecar serves itself.
var sidecarPaths = []string{tokenendpoint.PathRevoke, tokenendpoint.PathIntrospect, tokenendpoint.PathJWKS, tokenendpoint.PathAuthTest}

type canIOptions struct {
	*Options
	client string
	from   string
	output string
}

// canIResult is can-i's structured output.
type canIResult struct {
	APIKey   string            `json:"apiKey"`
	KeyID    string            `json:"keyID"`
	Policy   string            `json:"policy"`
	Method   string            `json:"method"`
	Path     string            `json:"path"`
	Client   string            `json:"client,omitempty"`
	From     string            `json:"from,omitempty"`
	Decision decision.Decision `json:"decision"`
}

func newCanICommand(root *Options) *cobra.Command {
	o := &canIOptions{Options: root}
	cmd := &cobra.Command{
		Use:   "can-i APIKEY METHOD PATH [--client KEY] [--from IP]",
		Short: "Explain whether a sidecar lets an API key make a request",
		Long: `Explain the decision a sidecar of the key's policy takes on METHOD PATH by this
key (or one of its clients): public path or sidecar endpoint, which rule
matched (or the policy's defaultAction), the permission it needs and whether
the key holds it, and with --from the CIDR verdict for that client address.

The answer comes from the sidecar's own code (sidecar/authn, sidecar/authz,
sidecar/clientaddr) run on the policy's compiled bundle, the same bytes every
sidecar loads. Exit code 0 when allowed, 1 when denied.`,
		Example: `  kubectl keygate can-i payments GET /charges
  kubectl keygate can-i payments POST /refunds --client acme-corp --from 185.184.111.39 -o yaml`,
		Args:              exactArgs(3, "APIKEY METHOD PATH"),
		ValidArgsFunction: root.completeKeys,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(o.output); err != nil {
				return err
			}
			if !strings.HasPrefix(args[2], "/") {
				return usagef("PATH %q must start with /", args[2])
			}
			var from netip.Addr
			if o.from != "" {
				a, err := netip.ParseAddr(o.from)
				if err != nil {
					return usagef("--from %q is not an IP address", o.from)
				}
				from = a
			}
			return o.run(cmd.Context(), args[0], strings.ToUpper(args[1]), args[2], from)
		},
	}
	cmd.Flags().StringVar(&o.client, "client", "", "act as this client of the key")
	cmd.Flags().StringVar(&o.from, "from", "", "client address to check against the CIDRs")
	addOutputFlag(cmd, &o.output)
	return cmd
}

func (o *canIOptions) run(ctx context.Context, name, method, path string, from netip.Addr) error {
	s, err := o.connect()
	if err != nil {
		return err
	}
	key, err := s.getKey(ctx, s.namespace, name)
	if err != nil {
		return err
	}
	policy := key.Spec.PolicyRef.Name
	b, err := s.readBundle(ctx, s.namespace, policy)
	if err != nil {
		return err
	}
	rt, err := config.CompileBundle(b)
	if err != nil {
		return fmt.Errorf("compile the bundle of TokenPolicy %q: %w", policy, err)
	}
	d := decision.Explain(rt, decision.Request{Method: method, Path: path, KeyID: key.Status.KeyID,
		Client: o.client, From: from, SidecarPaths: sidecarPaths, Now: o.Now()})
	res := canIResult{APIKey: name, KeyID: key.Status.KeyID, Policy: policy, Method: method, Path: path,
		Client: o.client, Decision: d}
	if from.IsValid() {
		res.From = from.String()
	}
	if o.output != formatTable {
		if err := printStructured(o.IO.Out, o.output, res); err != nil {
			return err
		}
	} else if err := o.explain(&res); err != nil {
		return err
	}
	if !d.Allowed {
		return silentExit{ExitError}
	}
	return nil
}

func (o *canIOptions) explain(r *canIResult) error {
	p := &printer{w: o.IO.Out}
	d := r.Decision
	verdict := "yes"
	switch {
	case !d.Allowed && d.Audit:
		verdict = fmt.Sprintf("no under Enforce (reason %s); the policy is in Audit, so the sidecar forwards it with X-Keygate-Decision: deny", d.Reason)
	case !d.Allowed:
		verdict = fmt.Sprintf("no (the sidecar answers %d, reason %s)", d.Status, d.Reason)
	}
	p.f("%s\n", verdict)
	who := "apikey/" + r.APIKey + " (" + dash(r.KeyID) + ")"
	if r.Client != "" {
		who += " as client " + r.Client
	}
	p.f("  request:     %s %s by %s, TokenPolicy %s\n", r.Method, r.Path, who, r.Policy)
	switch d.Reason {
	case decision.ReasonPublic:
		p.f("%s\n", "  route:       public path: forwarded without authentication")
		return p.err
	case decision.ReasonEndpoint:
		p.f("%s\n", "  route:       served by the sidecar itself (token endpoint, revocation, introspection, JWKS or auth test)")
		return p.err
	case "unknown_key":
		p.f("%s\n", "  key:         not in the policy's bundle (not Ready, disabled or expired: see kubectl keygate status)")
		return p.err
	case "key_expired":
		p.f("%s\n", "  key:         expired")
		return p.err
	case "unknown_client":
		p.f("  client:      %q is not a client of this key\n", r.Client)
		return p.err
	}
	switch {
	case !d.CIDR.Checked:
		p.f("  address:     not checked (give --from); allowed blocks: policy %s, key %s\n", blocks(d.CIDR.Policy), blocks(d.CIDR.Key))
	case d.CIDR.Allowed:
		p.f("  address:     %s allowed (policy %s, key %s)\n", r.From, blocks(d.CIDR.Policy), blocks(d.CIDR.Key))
	default:
		p.f("  address:     %s outside the allowed blocks (policy %s, key %s)\n", r.From, blocks(d.CIDR.Policy), blocks(d.CIDR.Key))
		return p.err
	}
	if d.Rule >= 0 {
		p.f("  rule:        rules[%d] %s %s needs %s\n", d.Rule, methods(d.RuleText.Methods), strings.Join(d.RuleText.Paths, ","), d.Permission)
		held := "held"
		if !d.Held {
			held = "NOT held"
		}
		p.f("  permission:  %s %s (holds: %s)\n", d.Permission, held, permList(d.Permissions))
	} else {
		p.f("  rule:        none matches; defaultAction %s\n", d.DefaultAction)
	}
	return p.err
}

func blocks(list []string) string {
	if len(list) == 0 {
		return "[any]"
	}
	return "[" + strings.Join(list, " ") + "]"
}

func methods(m []string) string {
	if len(m) == 0 {
		return "*"
	}
	return strings.Join(m, ",")
}

func permList(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, " ")
}
