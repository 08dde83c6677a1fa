#!/usr/bin/env bash
# Installs the peer proxies of `make bench-peers` from Debian packages:
# HAProxy, nginx and wrk, pinned to the bookworm versions they were measured
# with; when the archive has moved on (a security update replaces the pinned
# version), the current package of the same name is installed instead.
# Services are not started (the benchmark runs each binary itself).
set -euo pipefail

HAPROXY_VERSION=${HAPROXY_VERSION:-2.6.12-1+deb12u4}
NGINX_VERSION=${NGINX_VERSION:-1.22.1-9+deb12u11}
WRK_VERSION=${WRK_VERSION:-4.1.0-3+b2}

if command -v haproxy >/dev/null && command -v nginx >/dev/null && command -v wrk >/dev/null; then
	exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d 101: do not start the packaged services.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
	$sudo chmod +x /usr/sbin/policy-rc.d
	trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
pkgs=(haproxy="$HAPROXY_VERSION" nginx="$NGINX_VERSION" wrk="$WRK_VERSION")
if ! $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; then
	echo "peers.sh: pinned versions unavailable, installing the current ones" >&2
	$sudo apt-get install -y -qq --no-install-recommends haproxy nginx wrk
fi
