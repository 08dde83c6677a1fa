#!/usr/bin/env bash
# A real single-node Kubernetes for `make e2e`: etcd, kube-apiserver,
# containerd + runc, kubelet, kube-controller-manager, kube-scheduler and
# kube-proxy (nftables), pods on a CNI bridge of their own. Facts and pitfalls:
# docs/e2e.md.
#
#   hack/node.sh up     build (once), start, wait until the node is Ready; prints the kubeconfig path
#   hack/node.sh down   stop everything and leave the host as it was before `up`
#   hack/node.sh env    print `export KUBECONFIG=...` for a shell
#
# `up` refuses (exit status 3, nothing changed), saying why, when not root, when the host is not cgroup v1, when
# a port, the bridge or the work dir is taken. Everything lives in $NODE_DIR
# (default /tmp/keygate-node); `down` is safe to run any time, twice, or after
# a failed `up`, and is what a trap of hack/e2e.sh runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
NODE_DIR=${NODE_DIR:-/tmp/keygate-node}
BIN=$root/bin/node
IMAGES=$root/bin/images

# Fixed, uncommon addresses and ports (refused when taken).
BRIDGE=kgbr0
GATEWAY=198.18.0.1 # the bridge's address: the apiserver binds and advertises it
POD_CIDR=198.18.0.0/24
SERVICE_CIDR=198.18.1.0/24
ETCD_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=16443
KUBELET_PORT=20250
KUBELET_HEALTHZ_PORT=20248
KCM_PORT=20257
SCHEDULER_PORT=20259
PROXY_HEALTHZ_PORT=20256
PROXY_METRICS_PORT=20249
PORTS=($ETCD_PORT $ETCD_PEER_PORT $APISERVER_PORT $KUBELET_PORT $KUBELET_HEALTHZ_PORT $KCM_PORT $SCHEDULER_PORT $PROXY_HEALTHZ_PORT $PROXY_METRICS_PORT)
PAUSE_IMAGE=docker.io/keygate/pause:v0.1.0

# Host paths the kubelet, containerd and libcni write outside NODE_DIR; `down`
# removes each only if `up` found it absent.
HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /run/netns /opt/containerd /etc/containerd)
# Sysctls the kubelet, the bridge plugin or kube-proxy may change; `down` restores them.
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)

log() { printf '[node %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
refuse() { log "REFUSED: $*"; exit 3; } # the host is not as expected; nothing was changed
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for WHAT SECONDS CMD...: polls CMD every 0.2 s, bounded.
wait_for() {
	local what=$1 limit=$2 deadline
	shift 2
	deadline=$(($(date +%s) + limit))
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$deadline" ] || { log "timed out after ${limit}s waiting for $what"; return 1; }
		sleep 0.2
	done
}

preflight() {
	[ "$(id -u)" = 0 ] || refuse "must run as root (kubelet, containerd, a bridge and nftables need it)"
	[ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] && [ "$(stat -fc %T /sys/fs/cgroup/memory 2>/dev/null)" = cgroupfs ] ||
		die "the host is not cgroup v1 (this node's kubelet and containerd are configured for cgroup v1 with cgroupfs)"
	[ ! -e "$NODE_DIR" ] || refuse "$NODE_DIR exists: a node is up or was not torn down; run 'hack/node.sh down' first"
	! ip link show "$BRIDGE" >/dev/null 2>&1 || refuse "network link $BRIDGE exists; run 'hack/node.sh down' first"
	! ip -o addr | grep -q " ${GATEWAY%.*}\." || refuse "addresses in ${POD_CIDR%.*}.x are already in use on this host"
	local p
	for p in "${PORTS[@]}"; do
		! ss -Hltn "sport = :$p" | grep -q . || refuse "TCP port $p is taken (the node uses ${PORTS[*]})"
	done
	! nft list table ip kube-proxy >/dev/null 2>&1 || refuse "nftables table 'ip kube-proxy' exists: another kube-proxy runs here"
	local d
	for d in /sys/fs/cgroup/*/kubepods; do
		[ ! -e "$d" ] || refuse "$d exists: another kubelet runs here"
	done
	for p in /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
		[ -x "$p" ] || refuse "$p missing (hack/node-build.sh installs containernetworking-plugins)"
	done
	command -v runc >/dev/null || refuse "runc missing (hack/node-build.sh installs it)"
}

# ---- PKI ---------------------------------------------------------------------

# cert NAME CN O EXT [SAN]: a certificate signed by the node's CA.
cert() {
	local name=$1 cn=$2 o=$3 ext=$4 san=${5:-} pki=$NODE_DIR/pki subj
	subj="/CN=$cn"
	[ -z "$o" ] || subj="/O=$o$subj"
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
	openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$ext"
		[ -z "$san" ] || echo "subjectAltName=$san"
	} >"$pki/$name.ext"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
		-days 2 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr" "$pki/$name.ext"
}

pki() {
	local pki=$NODE_DIR/pki first_service
	mkdir -p "$pki"
	first_service=${SERVICE_CIDR%.*}.1
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
	openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=keygate-e2e-ca" -days 2 -out "$pki/ca.crt" 2>/dev/null
	cert apiserver kube-apiserver "" serverAuth \
		"IP:127.0.0.1,IP:$GATEWAY,IP:$first_service,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert kubelet-serving localhost "" serverAuth "DNS:localhost,IP:127.0.0.1,IP:$GATEWAY"
	cert apiserver-kubelet kube-apiserver-kubelet-client system:masters clientAuth
	cert admin keygate-e2e-admin system:masters clientAuth
	cert kubelet system:node:localhost system:nodes clientAuth
	cert kcm system:kube-controller-manager "" clientAuth
	cert scheduler system:kube-scheduler "" clientAuth
	cert proxy system:kube-proxy "" clientAuth
	openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
	openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
	local who
	for who in admin kubelet kcm scheduler proxy; do kubeconfig "$who"; done
}

# kubeconfig WHO: NODE_DIR/WHO.kubeconfig with WHO's client certificate.
kubeconfig() {
	local who=$1 pki=$NODE_DIR/pki
	cat >"$NODE_DIR/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: keygate-e2e
  cluster:
    server: https://$GATEWAY:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $who
  user:
    client-certificate: $pki/$who.crt
    client-key: $pki/$who.key
contexts:
- name: keygate-e2e
  context: {cluster: keygate-e2e, user: $who}
current-context: keygate-e2e
EOF
}

# ---- processes ---------------------------------------------------------------

# start NAME CMD...: runs CMD in the background, logs to NODE_DIR/logs/NAME.log,
# records its PID in NODE_DIR/pids/NAME.
start() {
	local name=$1
	shift
	"$@" >"$NODE_DIR/logs/$name.log" 2>&1 &
	echo $! >"$NODE_DIR/pids/$name"
}

alive() { kill -0 "$(cat "$NODE_DIR/pids/$1")" 2>/dev/null; }

healthy() { # healthy NAME PATH: NAME still runs and the apiserver answers ok on PATH
	alive "$1" || { log "$1 exited; its log:"; tail -n 30 "$NODE_DIR/logs/$1.log" >&2; exit 1; }
	[ "$(kubectl get --raw "$2" --request-timeout=2s 2>/dev/null)" = ok ]
}

kubectl() { "$BIN/kubectl" --kubeconfig "$NODE_DIR/admin.kubeconfig" "$@"; }

containerd_config() {
	local c=$NODE_DIR/containerd
	mkdir -p "$c" "$NODE_DIR/cni/net.d"
	cat >"$c/config.toml" <<EOF
version = 3
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  # root here lacks CAP_SYS_RESOURCE: runc cannot set a negative oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$NODE_DIR/cni/net.d"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
	cat >"$NODE_DIR/cni/net.d/10-keygate-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "keygate-e2e",
  "plugins": [{
    "type": "bridge",
    "bridge": "$BRIDGE",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": "$NODE_DIR/cni/ipam",
      "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
EOF
}

kubelet_config() {
	cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $NODE_DIR/pki/kubelet-serving.crt
tlsPrivateKeyFile: $NODE_DIR/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $NODE_DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$NODE_DIR/containerd/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
rotateCertificates: false
serverTLSBootstrap: false
clusterDomain: cluster.local
podLogsDir: $NODE_DIR/pod-logs
staticPodPath: ""
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 60
EOF
}

# ---- up ------------------------------------------------------------------------

up() {
	preflight
	local t0 t
	t0=$(now)
	"$root/hack/node-build.sh" >/dev/null
	images
	log "binaries and images ready in $(since "$t0") s"
	t=$(now)
	mkdir -p "$NODE_DIR"/{logs,pids,state,pod-logs}
	# What `down` must restore.
	local p s
	for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$NODE_DIR/state/created-paths"
	for s in "${SYSCTLS[@]}"; do
		if [ -e "/proc/sys/${s//.//}" ]; then echo "$s=$(sysctl -n "$s")"; fi
	done >"$NODE_DIR/state/sysctls"

	pki
	log "PKI in $(since "$t") s"

	ip link add "$BRIDGE" type bridge
	ip addr add "$GATEWAY/24" dev "$BRIDGE"
	ip link set "$BRIDGE" up

	start etcd "$BIN/etcd" --data-dir "$NODE_DIR/etcd" --unsafe-no-fsync \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn

	local pk=$NODE_DIR/pki
	start kube-apiserver "$BIN/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address "$GATEWAY" --advertise-address "$GATEWAY" --secure-port "$APISERVER_PORT" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--client-ca-file "$pk/ca.crt" --tls-cert-file "$pk/apiserver.crt" --tls-private-key-file "$pk/apiserver.key" \
		--kubelet-client-certificate "$pk/apiserver-kubelet.crt" --kubelet-client-key "$pk/apiserver-kubelet.key" \
		--kubelet-certificate-authority "$pk/ca.crt" --kubelet-preferred-address-types Hostname \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$pk/sa.pub" --service-account-signing-key-file "$pk/sa.key" \
		--authorization-mode Node,RBAC --allow-privileged --profiling=false

	containerd_config
	PATH="$BIN:$PATH" start containerd "$BIN/containerd" --config "$NODE_DIR/containerd/config.toml"

	wait_for "kube-apiserver /readyz" 120 healthy kube-apiserver /readyz
	log "kube-apiserver ready at $(since "$t0") s"

	wait_for "containerd" 60 "$BIN/ctr" -a "$NODE_DIR/containerd/containerd.sock" version
	local img
	for img in "$IMAGES"/*.tar; do
		"$BIN/ctr" -a "$NODE_DIR/containerd/containerd.sock" -n k8s.io images import "$img" >/dev/null 2>&1 || die "ctr import $img failed"
	done

	kubelet_config
	PATH="$BIN:$PATH" start kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" \
		--kubeconfig "$NODE_DIR/kubelet.kubeconfig" --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/pki" \
		--hostname-override localhost --node-ip "$GATEWAY"
	start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$NODE_DIR/kcm.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false --use-service-account-credentials \
		--service-account-private-key-file "$pk/sa.key" --root-ca-file "$pk/ca.crt" \
		--cluster-signing-cert-file "$pk/ca.crt" --cluster-signing-key-file "$pk/ca.key" --allocate-node-cidrs=false \
		--profiling=false
	start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$NODE_DIR/scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false
	start kube-proxy "$BIN/kube-proxy" --kubeconfig "$NODE_DIR/proxy.kubeconfig" --proxy-mode nftables \
		--hostname-override localhost --cluster-cidr "$POD_CIDR" --nodeport-addresses "$GATEWAY/32" \
		--conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
		--healthz-bind-address "127.0.0.1:$PROXY_HEALTHZ_PORT" --metrics-bind-address "127.0.0.1:$PROXY_METRICS_PORT"

	wait_for "node localhost Ready" 120 node_ready
	log "node Ready at $(since "$t0") s"
	wait_for "ServiceAccount default/default" 120 kubectl get serviceaccount default -n default
	for p in kube-controller-manager kube-scheduler kube-proxy; do
		alive "$p" || die "$p exited: $(tail -n 20 "$NODE_DIR/logs/$p.log")"
	done
	echo "$(since "$t") $(since "$t0")" >"$NODE_DIR/state/up-seconds"
	log "node up in $(since "$t") s with built binaries ($(since "$t0") s with the build check); KUBECONFIG=$NODE_DIR/admin.kubeconfig"
	echo "$NODE_DIR/admin.kubeconfig"
}

node_ready() {
	local p
	for p in kubelet containerd; do alive "$p" || { log "$p exited:"; tail -n 30 "$NODE_DIR/logs/$p.log" >&2; exit 1; }; done
	[ "$(kubectl get node localhost -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# images: the keygate images (make images), the demo upstream and the pause
# image, as tarballs in bin/images.
images() {
	mkdir -p "$IMAGES"
	if [ ! -s "$IMAGES/pause.tar" ] || [ "$root/hack/image/pause/main.go" -nt "$IMAGES/pause.tar" ]; then
		(cd "$root/hack/image" && CGO_ENABLED=0 go build -o "$BIN/pause" ./pause &&
			go run . -binary "$BIN/pause" -tag "$PAUSE_IMAGE" -out "$IMAGES/pause.tar" -ca-certificates "") >/dev/null
	fi
	local want
	for want in manager sidecar demo-upstream; do
		ls "$IMAGES/$want"-*.tar >/dev/null 2>&1 || die "bin/images/$want-*.tar missing: run 'make images' first"
	done
}

# ---- down ----------------------------------------------------------------------

stop_pid() { # stop_pid NAME: SIGTERM, then SIGKILL after 10 s
	local f=$NODE_DIR/pids/$1 pid i
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
}

# shims: PIDs of containerd shims started for this node's containerd.
shims() {
	local d
	for d in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -q -- "-address $NODE_DIR/containerd/containerd.sock" && echo "${d#/proc/}"
	done
	return 0
}

down() {
	[ "$(id -u)" = 0 ] || die "must run as root"
	[ -d "$NODE_DIR" ] || { log "no node at $NODE_DIR"; return 0; }
	local t0 sock=$NODE_DIR/containerd/containerd.sock
	t0=$(now)
	# Workloads first, while the kubelet runs: CNI frees the IPs and netns.
	stop_pid kube-controller-manager
	stop_pid kube-scheduler
	if [ -f "$NODE_DIR/pids/kubelet" ] && alive kubelet && alive kube-apiserver; then
		timeout 60 "$BIN/kubectl" --kubeconfig "$NODE_DIR/admin.kubeconfig" delete pods --all --all-namespaces \
			--grace-period=2 --wait=true --request-timeout=10s >/dev/null 2>&1 || log "some pods did not stop in time"
	fi
	stop_pid kube-proxy
	stop_pid kubelet
	if [ -S "$sock" ] && [ -f "$NODE_DIR/pids/containerd" ] && alive containerd; then
		local ctr=("$BIN/ctr" -a "$sock" -n k8s.io) c
		for c in $(timeout 20 "${ctr[@]}" tasks list -q 2>/dev/null); do
			timeout 10 "${ctr[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
			timeout 10 "${ctr[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true
		done
	fi
	stop_pid containerd
	local pid
	for pid in $(shims); do kill -9 "$pid" 2>/dev/null || true; done
	stop_pid kube-apiserver
	stop_pid etcd

	# Mounts under NODE_DIR and the CNI netns, deepest first.
	local m
	for m in $(awk -v d="$NODE_DIR" '$2 == d || index($2, d "/") == 1 || $2 ~ /^\/run\/netns\/cni-/ {print $2}' /proc/mounts | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	rm -f /run/netns/cni-* 2>/dev/null || true

	ip link del "$BRIDGE" 2>/dev/null || true
	local l
	for l in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
		ip -d link show "$l" 2>/dev/null | grep -q "master $BRIDGE" && ip link del "$l" 2>/dev/null || true
	done
	nft delete table ip kube-proxy 2>/dev/null || true
	nft delete table ip6 kube-proxy 2>/dev/null || true
	local cg
	for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
		[ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
	if [ -f "$NODE_DIR/state/sysctls" ]; then
		while IFS= read -r s; do sysctl -qw "$s" >/dev/null 2>&1 || log "could not restore $s"; done <"$NODE_DIR/state/sysctls"
	fi
	if [ -f "$NODE_DIR/state/created-paths" ]; then
		while IFS= read -r p; do
			[ -n "$p" ] && rm -rf --one-file-system "$p" 2>/dev/null || true
		done <"$NODE_DIR/state/created-paths"
	fi
	rm -rf --one-file-system "$NODE_DIR" || log "could not remove all of $NODE_DIR"
	log "node down in $(since "$t0") s"
	for cg in /sys/fs/cgroup/*/kubepods; do [ ! -e "$cg" ] || log "WARNING: $cg is left behind"; done
	! ip link show "$BRIDGE" >/dev/null 2>&1 || log "WARNING: $BRIDGE is left behind"
}

case ${1:-} in
up) up ;;
down) down ;;
env) echo "export KUBECONFIG=$NODE_DIR/admin.kubeconfig" ;;
*) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
