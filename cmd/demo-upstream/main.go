// Command demo-upstream is the demo workload of keygate: it answers every
// request with its method, path and the X-Keygate-* identity headers the
// sidecar added (see package demo/upstream). It binds 127.0.0.1 by default,
// so that in a pod it is reachable only through the sidecar beside it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keygate-dev/keygate/demo/upstream"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demo-upstream:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo-upstream", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on (port 0 picks a free port; the bound address is printed)")
	drain := fs.Duration("drain-timeout", 5*time.Second, "how long requests in flight may finish after SIGTERM")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("demo-upstream listening on %s\n", ln.Addr())
	return upstream.Serve(ctx, ln, *drain)
}
