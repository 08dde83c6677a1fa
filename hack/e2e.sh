#!/usr/bin/env bash
# `make e2e`: brings up the real single-node cluster (hack/node.sh), runs the
# Go tests of test/node against it (build tag e2enode) and always tears the
# node down, from a trap, leaving the host as it was. Expects `make images`
# and bin/helm (the Makefile sees to both). Extra `go test` flags: E2E_FLAGS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t0=$(date +%s)
# Tear down whatever `up` started, unless it refused to start (status 3: the
# host is not as expected, e.g. another node is up, which is not ours to stop).
refused=
trap '[ -n "$refused" ] || hack/node.sh down' EXIT
kubeconfig=$(hack/node.sh up) || { rc=$?; [ $rc -ne 3 ] || refused=1; exit $rc; }
export KEYGATE_E2E_KUBECONFIG=$kubeconfig
export KEYGATE_E2E_NODE_UP_SECONDS
KEYGATE_E2E_NODE_UP_SECONDS=$(cut -d' ' -f1 "$(dirname "$kubeconfig")/state/up-seconds")
# shellcheck disable=SC2086 # E2E_FLAGS is a list of flags
go test -tags e2enode -count=1 -timeout 40m ${E2E_FLAGS:--v} ./test/node
echo "make e2e: $(($(date +%s) - t0)) s including the node's build check, start and tests (teardown follows)" >&2
