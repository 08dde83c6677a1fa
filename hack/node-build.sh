#!/usr/bin/env bash
# Builds the binaries of the real single-node cluster of `make e2e` into
# bin/node, once, at the versions pinned by hack/node (Kubernetes v1.37.2:
# kube-apiserver, kubelet, kube-controller-manager, kube-scheduler, kube-proxy,
# kubectl, in one go build) and hack/containerd (containerd v2.4.2, its runc
# shim, ctr). etcd is the envtest one (hack/envtest.sh, bin/k8s/etcd). runc and
# the CNI plugins come from Debian. A stamp per module rebuilds on a pin change.
# Prints the directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/bin/node"
mkdir -p "$out"

k8s_version=v1.37.2
stamp() { cat "$root/hack/$1/go.mod" "$root/hack/$1/go.sum" | sha256sum | cut -c1-16; } # the pins only, not the path

fresh() { # fresh MODULE BINARY...: every binary exists and was built from MODULE's pins
	local module=$1 want bin
	shift
	want=$(stamp "$module")
	[ "$(cat "$out/.$module.stamp" 2>/dev/null)" = "$want" ] || return 1
	for bin in "$@"; do [ -x "$out/$bin" ] || return 1; done
}

k8s_bins=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy kubectl)
if ! fresh node "${k8s_bins[@]}"; then
	echo "Building Kubernetes $k8s_version node binaries from source (≈ 12 min on 2 free cores, once)" >&2
	v=k8s.io/component-base/version
	cv=k8s.io/client-go/pkg/version
	ldflags="-s -w -X $v.gitVersion=$k8s_version -X $v.gitMajor=1 -X $v.gitMinor=37 -X $v.gitTreeState=clean"
	ldflags+=" -X $v.buildDate=2026-01-01T00:00:00Z -X $cv.gitVersion=$k8s_version -X $cv.gitMajor=1 -X $cv.gitMinor=37"
	pkgs=()
	for bin in "${k8s_bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$bin"); done
	rm -rf "$out/.tmp-node" && mkdir -p "$out/.tmp-node"
	(cd "$root/hack/node" && CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$out/.tmp-node/" "${pkgs[@]}")
	for bin in "${k8s_bins[@]}"; do mv "$out/.tmp-node/$bin" "$out/$bin"; done
	rmdir "$out/.tmp-node"
	stamp node >"$out/.node.stamp"
fi

ctrd_bins=(containerd containerd-shim-runc-v2 ctr)
if ! fresh containerd "${ctrd_bins[@]}"; then
	echo "Building containerd v2.4.2 from source (≈ 3 min, once)" >&2
	pkgs=()
	for bin in "${ctrd_bins[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$bin"); done
	rm -rf "$out/.tmp-ctrd" && mkdir -p "$out/.tmp-ctrd"
	(cd "$root/hack/containerd" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$out/.tmp-ctrd/" "${pkgs[@]}")
	for bin in "${ctrd_bins[@]}"; do mv "$out/.tmp-ctrd/$bin" "$out/$bin"; done
	rmdir "$out/.tmp-ctrd"
	stamp containerd >"$out/.containerd.stamp"
fi

# etcd: the envtest build (same pinned etcd, hack/etcd).
"$root/hack/envtest.sh" >/dev/null
ln -sf ../k8s/etcd "$out/etcd"

# runc, the CNI plugins, nft (kube-proxy), openssl (PKI), ip: Debian packages.
pkgs=(runc containernetworking-plugins nftables openssl iproute2)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || { echo "node-build: ${missing[*]} missing and not root to apt-get them" >&2; exit 1; }
	echo "Installing ${missing[*]} (Debian)" >&2
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "$out"
