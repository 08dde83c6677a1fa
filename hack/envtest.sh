#!/usr/bin/env bash
# Builds the envtest binaries into bin/k8s from source, once: kube-apiserver
# from k8s.io/kubernetes (hack/envtest module) and etcd from
# go.etcd.io/etcd/server/v3 (hack/etcd module). setup-envtest cannot download
# them here. Prints the directory to use as KUBEBUILDER_ASSETS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
assets="$root/bin/k8s"
mkdir -p "$assets"

# stamp NAME: the pinned versions a binary was built from; a change rebuilds.
stamp() { cat "$root/hack/$1/go.mod" "$root/hack/$1/go.sum" | sha256sum | cut -c1-16; } # the pins only: the same in every clone

build() {
	local module=$1 pkg=$2 out=$3
	local want
	want=$(stamp "$module")
	if [ -x "$assets/$out" ] && [ "$(cat "$assets/.$out.stamp" 2>/dev/null)" = "$want" ]; then
		return
	fi
	echo "Building $out from source (several minutes, once)" >&2
	(cd "$root/hack/$module" && CGO_ENABLED=0 go build -o "$assets/$out.tmp" "$pkg")
	mv "$assets/$out.tmp" "$assets/$out"
	echo "$want" >"$assets/.$out.stamp"
}

build envtest k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build etcd . etcd
echo "$assets"
