// Package cli is kubectl-keygate: the commands platform engineers run to
// rotate, inspect and test keygate's API keys from kubectl. Each command is a
// thin layer over pure code shared with the operator and the sidecar
// (plugin/inspect, sidecar/decision, sidecar/revocation).
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// Options are what every command shares: the kubectl connection flags, the
// streams and the clock.
type Options struct {
	Flags *genericclioptions.ConfigFlags
	IO    genericiooptions.IOStreams
	// AllNamespaces is -A.
	AllNamespaces bool
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// IsTerminal reports whether w is a terminal (credentials warns then);
	// the real check on *os.File when nil.
	IsTerminal func(w io.Writer) bool
	// PollInterval is how often --wait looks (default 250ms).
	PollInterval time.Duration
	// ListPageSize is how many ApiKeys one List request asks for (default
	// 500, kubectl's --chunk-size): a policy can hold 100,000 keys, and the
	// plugin pages through them as kubectl get does.
	ListPageSize int64
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// silentExit ends with a code and no message (can-i's "denied").
type silentExit struct{ code int }

func (e silentExit) Error() string { return fmt.Sprintf("exit %d", e.code) }

// Run runs kubectl-keygate with args and returns the exit code.
func Run(args []string, o *Options) int {
	root := NewRootCommand(o)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	var silent silentExit
	if errors.As(err, &silent) {
		return silent.code
	}
	_, _ = fmt.Fprintln(o.IO.ErrOut, "error:", err)
	var usage usageError
	if errors.As(err, &usage) || strings.HasPrefix(err.Error(), "unknown command") ||
		strings.HasPrefix(err.Error(), "unknown flag") || strings.HasPrefix(err.Error(), "unknown shorthand flag") {
		_, _ = fmt.Fprintf(o.IO.ErrOut, "See '%s --help' for usage.\n", commandName)
		return ExitUsage
	}
	return ExitError
}

const commandName = "kubectl keygate"

// NewRootCommand builds the command tree.
func NewRootCommand(o *Options) *cobra.Command {
	if o.Flags == nil {
		o.Flags = genericclioptions.NewConfigFlags(true)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.IsTerminal == nil {
		o.IsTerminal = isTerminal
	}
	if o.PollInterval == 0 {
		o.PollInterval = 250 * time.Millisecond
	}
	root := &cobra.Command{
		Use:   "kubectl-keygate",
		Short: "Rotate, inspect and test keygate API keys",
		Long: `kubectl keygate speaks keygate's language: rotate API keys and wait until every
sidecar has the new secret, see when a previous secret stops working, read a
consumer's credentials, get a real token from a sidecar, revoke a token, and
ask why a key gets 403 on a route.

Exit codes: 0 success (can-i: allowed), 1 error (can-i: denied), 2 usage.`,
		Example: `  kubectl keygate status -n shop
  kubectl keygate rotate payments --wait
  kubectl keygate can-i payments GET /charges --from 185.184.111.39`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Annotations: map[string]string{
			cobra.CommandDisplayNameAnnotation: commandName,
		},
	}
	root.SetIn(o.IO.In)
	root.SetOut(o.IO.Out)
	root.SetErr(o.IO.ErrOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	o.Flags.AddFlags(root.PersistentFlags())
	root.AddCommand(
		newRotateCommand(o),
		newStatusCommand(o),
		newCredentialsCommand(o),
		newTokenCommand(o),
		newRevokeCommand(o),
		newCanICommand(o),
		newToggleCommand(o, "disable", true),
		newToggleCommand(o, "enable", false),
		newVersionCommand(o),
	)
	return root
}

// session is a connection to the cluster for one command.
type session struct {
	cfg       *rest.Config
	client    client.Client
	core      kubernetes.Interface
	namespace string
	pageSize  int64
}

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := keygatev1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

func (o *Options) connect() (*session, error) {
	cfg, err := o.Flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	// --wait polls a few objects several times a second.
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 20, 40
	}
	ns, _, err := o.Flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, err
	}
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	pageSize := o.ListPageSize
	if pageSize <= 0 {
		pageSize = defaultListPageSize
	}
	return &session{cfg: cfg, client: c, core: core, namespace: ns, pageSize: pageSize}, nil
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("expected %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) // #nosec G115 -- a file descriptor fits in int
}
