// Command pause is the pod sandbox ("infra") container of the e2e node
// (hack/node.sh): it holds the pod's namespaces and waits for SIGTERM or
// SIGINT, then exits 0. It is built into an image by hack/image, so the node
// never pulls registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
