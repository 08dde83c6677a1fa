#!/usr/bin/env bash
# Installs the pinned build tools into bin/ with `go install`; a tool already
# present at the pinned version is not rebuilt.
#   hack/tools.sh controller-gen|golangci-lint|helm
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"

CONTROLLER_TOOLS_VERSION=${CONTROLLER_TOOLS_VERSION:-v0.23.0}
GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}

# install NAME VERSION PACKAGE: go install PACKAGE@VERSION as bin/NAME-VERSION,
# then point bin/NAME at it, so a version bump rebuilds and nothing else does.
install() {
	local name=$1 version=$2 pkg=$3
	local target="$bin/$name-$version"
	if [ ! -x "$target" ]; then
		echo "Installing $name $version"
		local tmp
		tmp=$(mktemp -d)
		GOBIN="$tmp" CGO_ENABLED=0 go install "$pkg@$version"
		mv "$tmp/$(basename "${pkg%%/v[0-9]*}")" "$target" 2>/dev/null || mv "$tmp"/* "$target"
		rm -rf "$tmp"
	fi
	ln -sf "$name-$version" "$bin/$name"
}

for tool in "$@"; do
	case "$tool" in
	controller-gen) install controller-gen "$CONTROLLER_TOOLS_VERSION" sigs.k8s.io/controller-tools/cmd/controller-gen ;;
	golangci-lint) install golangci-lint "$GOLANGCI_LINT_VERSION" github.com/golangci/golangci-lint/v2/cmd/golangci-lint ;;
	helm) install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
	*) echo "hack/tools.sh: unknown tool $tool" >&2; exit 2 ;;
	esac
done
