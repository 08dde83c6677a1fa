//go:build tools

// Package node pins the Kubernetes commands built into bin/node for the real
// single-node cluster of `make e2e`.
package node

import (
	_ "k8s.io/cli-runtime/pkg/genericclioptions"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
