// Command kubectl-keygate is the kubectl plugin of keygate: with it on PATH,
// `kubectl keygate rotate|status|credentials|token|revoke|can-i|disable|enable`
// manage API keys. The commands live in plugin/cli.
package main

import (
	"os"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/keygate-dev/keygate/plugin/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], &cli.Options{IO: genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}}))
}
