// Command etcd is etcd's own server entry point, built from the module so that
// envtest has an etcd binary without a download.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
