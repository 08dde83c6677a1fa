//go:build tools

// Package containerd pins the containerd commands built into bin/node for the
// real single-node cluster of `make e2e`.
package containerd

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
