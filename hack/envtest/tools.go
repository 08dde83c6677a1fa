//go:build tools

// Package envtest pins the commands built into bin/ for envtest.
package envtest

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
