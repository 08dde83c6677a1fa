#!/usr/bin/env bash
# Fails when a generated file is stale: snapshots the generated files,
# regenerates them, and compares. Also fails on unformatted Go code.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
generated=(api/v1alpha1/zz_generated.deepcopy.go config/crd/bases config/rbac/role.yaml config/webhook/manifests.yaml charts/keygate/crds)
snap=$(mktemp -d)
trap 'rm -rf "$snap"' EXIT
for p in "${generated[@]}"; do
	if [ -e "$p" ]; then mkdir -p "$snap/$(dirname "$p")" && cp -r "$p" "$snap/$p"; fi
done
make --no-print-directory manifests generate >/dev/null
stale=0
for p in "${generated[@]}"; do
	if [ -e "$p" ] || [ -e "$snap/$p" ]; then
		if ! diff -r "$snap/$p" "$p" >/dev/null 2>&1; then
			echo "stale generated file: $p (run 'make manifests generate' and commit)" >&2
			diff -r "$snap/$p" "$p" | head -20 >&2 || true
			stale=1
		fi
	fi
done
unformatted=$(gofmt -l $(git ls-files --cached --others --exclude-standard '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed on: $unformatted" >&2
	stale=1
fi
exit $stale
