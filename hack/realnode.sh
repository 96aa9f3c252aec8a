#!/usr/bin/env bash
# A real node beside the kwok nodes of hack/controlplane.sh: containerd + runc + kubelet + CoreDNS +
# a private bridge network, so operator-created pods really run (tests/e2e/test_real_node.py).
#
#   hack/realnode.sh build   # build containerd, kubelet, CoreDNS from Go modules into the cache
#   hack/realnode.sh up      # start them against the control plane in $LLMTO_CP_DIR (must be up)
#   hack/realnode.sh down    # stop them; remove the bridge, iptables rules, mounts, sysctls, state
#   hack/realnode.sh status
#   hack/realnode.sh deps    # install the Debian packages it needs (runc, CNI plugins, iptables, ...)
#
# Normally driven by `hack/controlplane.sh up --real-node` and `hack/controlplane.sh down`.
#
# Node: `realnode` (label llmtraining.dev/real-node=true, taint llmtraining.dev/real-node=true:NoSchedule:
# only pods that tolerate it land there; kwok tests never do). Its IP is the bridge address.
# Network: bridge $REALNODE_BRIDGE (default llmto0) with $REALNODE_SUBNET (default 10.244.77.0/24), no
# masquerade, no default gateway; FORWARD drops everything from/to the subnet that is not pod<->pod, so no
# pod traffic leaves this machine. Pods reach the API server at the `kubernetes` Service IP (10.0.0.1:443)
# through one DNAT rule to the loopback API server (route_localnet on the bridge only).
# DNS: CoreDNS on the bridge IP, port 53, answers cluster.local from the API server, NXDOMAIN otherwise.
#
# Machine-specific choices (see issue 10): containerd >= 2 (kubelet 1.37 needs its CRI RuntimeConfig),
# Debian's runc (crun 1.8 rejects the OCI spec version), restrict_oom_score_adj + kubelet oomScoreAdj 0
# (the VM's capability bounding set may lack CAP_SYS_RESOURCE), cgroupfs driver with cgroup v1 allowed.
set -euo pipefail

CONTAINERD_VERSION="v2.4.2"   # github.com/containerd/containerd/v2
K8S_VERSION="v1.37.2"         # kubelet, same as hack/controlplane.sh
COREDNS_VERSION="v1.14.7"     # github.com/coredns/coredns
BUILD_REV="1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
CP_CACHE="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}/controlplane"
CACHE_ROOT="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}/realnode"
VERSIONS_HASH="$(printf '%s\n' "$CONTAINERD_VERSION" "$K8S_VERSION" "$COREDNS_VERSION" "$BUILD_REV" \
  "$("$GO" env GOVERSION 2>/dev/null || echo go?)" | sha256sum | cut -c1-12)"
BUILD_DIR="${CACHE_ROOT}/${VERSIONS_HASH}"
BIN_DIR="${BUILD_DIR}/bin"
CP_DIR="${LLMTO_CP_DIR:-/tmp/llmto-controlplane}"
STATE="${CP_DIR}/realnode"

BRIDGE="${REALNODE_BRIDGE:-llmto0}"
SUBNET_PREFIX="${REALNODE_SUBNET_PREFIX:-10.244.77}"   # a /24
SUBNET="${SUBNET_PREFIX}.0/24"
NODE_IP="${SUBNET_PREFIX}.1"
NODE_NAME="${REALNODE_NAME:-realnode}"
SERVICE_IP="10.0.0.1"       # the `kubernetes` Service (first IP of the control plane's 10.0.0.0/24)
CLUSTER_DNS="${NODE_IP}"
CNI_BIN_DIR="/usr/lib/cni"
DEBIAN_PACKAGES=(runc containernetworking-plugins iptables iproute2 buildah debootstrap)

log() { printf '[realnode %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ================================================================= build ====
# shellcheck source=lib/go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-env.sh"
# shellcheck source=lib/spawn.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/spawn.sh"

stamp_ok() { [[ -f "${BIN_DIR}/.stamp-$1" && "$(cat "${BIN_DIR}/.stamp-$1")" == "$2" ]]; }
stamp() { echo "$2" >"${BIN_DIR}/.stamp-$1"; }

# module_dir NAME : a wrapper module dir whose go.mod is written by the caller
module_dir() { local d="${BUILD_DIR}/src/$1"; mkdir -p "$d"; echo "$d"; }

build_containerd() {
  stamp_ok containerd "$CONTAINERD_VERSION" && [[ -x "$BIN_DIR/containerd" ]] && {
    log "containerd ${CONTAINERD_VERSION}: cached"; return; }
  local dir t0=$SECONDS m=github.com/containerd/containerd/v2
  dir="$(module_dir containerd)"
  [[ -f "$dir/go.mod" ]] || printf 'module llmto.local/realnode/containerd\n\ngo 1.26.0\n\nrequire %s %s\n' \
    "$m" "$CONTAINERD_VERSION" >"$dir/go.mod"
  log "building containerd ${CONTAINERD_VERSION} (cold: ~5 min on 2 cores) ..."
  (cd "$dir" && "$GO" build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags="-s -w -X ${m}/version.Version=${CONTAINERD_VERSION}" -o "$BIN_DIR/" \
    "$m/cmd/containerd" "$m/cmd/ctr" "$m/cmd/containerd-shim-runc-v2")
  stamp containerd "$CONTAINERD_VERSION"; log "containerd built in $((SECONDS - t0))s"
}

build_kubelet() {
  stamp_ok kubelet "$K8S_VERSION" && [[ -x "$BIN_DIR/kubelet" ]] && { log "kubelet ${K8S_VERSION}: cached"; return; }
  local dir t0=$SECONDS src ldflags="-s -w" p major minor
  # the control plane's wrapper module (its staging replaces), so the module and build caches are shared
  src="$(bash "$ROOT/hack/controlplane.sh" bin-dir)"; src="${src%/bin}/src/k8s"
  [[ -f "$src/go.mod" ]] || die "no control-plane build in ${src}: run hack/controlplane.sh build first"
  dir="$(module_dir kubelet)"
  sed 's#^module .*#module llmto.local/realnode/kubelet#' "$src/go.mod" >"$dir/go.mod"
  cp "$src/go.sum" "$dir/go.sum" 2>/dev/null || true
  major="${K8S_VERSION#v}"; major="${major%%.*}"; minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${p}.gitVersion=${K8S_VERSION} -X ${p}.gitMajor=${major} -X ${p}.gitMinor=${minor}"
    ldflags+=" -X ${p}.gitTreeState=clean -X ${p}.buildDate=1970-01-01T00:00:00Z"
  done
  log "building kubelet ${K8S_VERSION} (cold: ~3 min with the control plane's caches warm) ..."
  (cd "$dir" && "$GO" build -trimpath -ldflags="$ldflags" -o "$BIN_DIR/kubelet" k8s.io/kubernetes/cmd/kubelet)
  stamp kubelet "$K8S_VERSION"; log "kubelet built in $((SECONDS - t0))s"
}

# CoreDNS with only the plugins the cluster DNS needs (no forward: nothing outside the cluster resolves)
COREDNS_PLUGINS="bind cache errors health kubernetes loadbalance log ready template"
build_coredns() {
  stamp_ok coredns "$COREDNS_VERSION $COREDNS_PLUGINS" && [[ -x "$BIN_DIR/coredns" ]] && { log "coredns ${COREDNS_VERSION}: cached"; return; }
  local dir t0=$SECONDS m=github.com/coredns/coredns
  dir="$(module_dir coredns)"
  [[ -f "$dir/go.mod" ]] || printf 'module llmto.local/realnode/coredns\n\ngo 1.26.0\n\nrequire %s %s\n' \
    "$m" "$COREDNS_VERSION" >"$dir/go.mod"
  cat >"$dir/main.go" <<'EOG'
// CoreDNS with a minimal plugin set (see hack/realnode.sh).
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
EOG
  log "building coredns ${COREDNS_VERSION} (plugins: ${COREDNS_PLUGINS}) ..."
  (cd "$dir" && "$GO" mod tidy >/dev/null 2>&1 || true
   "$GO" build -trimpath -ldflags="-s -w" -o "$BIN_DIR/coredns" .)
  stamp coredns "$COREDNS_VERSION $COREDNS_PLUGINS"; log "coredns built in $((SECONDS - t0))s"
}

cmd_build() {
  local t0=$SECONDS
  mkdir -p "$BIN_DIR"
  go_env "$CP_CACHE"
  log "cache: ${BUILD_DIR}"
  build_containerd
  build_coredns
  build_kubelet
  log "build done in $((SECONDS - t0))s; binaries in ${BIN_DIR}"
}

cmd_deps() {
  local wanted=() pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || wanted+=("$pkg")
  done
  ((${#wanted[@]})) || return 0
  log "installing Debian packages: ${wanted[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
}

# ================================================================== up =====
PKI="${CP_DIR}/pki"
CP_BIN=""
kc() { "$CP_BIN/kubectl" --kubeconfig="${CP_DIR}/kubeconfig" "$@"; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start NAME ARGS... : detached, log in $STATE/logs/NAME.log, pid in $STATE/pids/NAME.pid
start() {
  local name="$1"; shift
  log "starting ${name}"
  spawn "$STATE/pids/$name.pid" "$STATE/logs/$name.log" "$@"
}
alive_pid() {
  local pid f="$STATE/pids/$1.pid"
  [[ -s "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "^${BIN_DIR}/" || return 1
  echo "$pid"
}
wait_for() { # wait_for WHAT TIMEOUT COMPONENT CMD...
  local what="$1" timeout="$2" comp="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! alive_pid "$comp" >/dev/null; then
      tail -n 30 "$STATE/logs/$comp.log" >&2 || true; die "${comp} exited while waiting for ${what}"
    fi
    ((SECONDS < deadline)) || { [[ -n "$comp" ]] && tail -n 30 "$STATE/logs/$comp.log" >&2; die "timed out waiting for ${what}"; }
    sleep 0.5
  done
  log "${what}: ok"
}

sign() { # sign NAME SUBJECT EKU [SAN] : a certificate from the control plane's CA
  local name="$1" subj="$2" eku="$3" san="${4:-}" d="$STATE/pki"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/$name.key" 2>/dev/null
  openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  { echo "basicConstraints=critical,CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"; [[ -n "$san" ]] && echo "subjectAltName=$san"; } >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
  rm -f "$d/$name.csr" "$d/$name.ext"; chmod 600 "$d/$name.key"
}
kubeconfig() { # kubeconfig FILE CERT
  local server; server="$(awk '/server:/ {print $2; exit}' "${CP_DIR}/kubeconfig")"
  cat >"$1" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: llmto
  cluster: {server: "${server}", certificate-authority: "${PKI}/ca.crt"}
users:
- name: u
  user: {client-certificate: "$STATE/pki/$2.crt", client-key: "$STATE/pki/$2.key"}
contexts:
- name: llmto
  context: {cluster: llmto, user: u}
current-context: llmto
EOK
  chmod 600 "$1"
}

# ---- network ---------------------------------------------------------------------
CHAIN="LLMTO-${BRIDGE}"   # our own chains (filter and nat), jumped to from FORWARD/INPUT and PREROUTING
setup_network() {
  local apiport; apiport="$(awk -F: '/server:/ {print $NF; exit}' "${CP_DIR}/kubeconfig")"
  ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" alias "llmto:${STATE}"
  echo "$BRIDGE" >"$STATE/bridge"
  ip addr add "${NODE_IP}/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # pods reach the API server (127.0.0.1) through the Service IP: DNAT to loopback needs route_localnet,
  # on this bridge only (the setting goes with the bridge)
  sysctl -qw "net.ipv4.conf.${BRIDGE}.route_localnet=1"
  iptables -t filter -N "$CHAIN"
  iptables -t filter -A "$CHAIN" -s "$SUBNET" -d "$SUBNET" -j ACCEPT
  iptables -t filter -A "$CHAIN" -s "$SUBNET" -j DROP
  iptables -t filter -A "$CHAIN" -d "$SUBNET" -j DROP
  iptables -t filter -I FORWARD 1 -j "$CHAIN"
  iptables -t nat -N "$CHAIN"
  iptables -t nat -A "$CHAIN" -s "$SUBNET" -d "${SERVICE_IP}/32" -p tcp --dport 443 -j DNAT --to-destination "127.0.0.1:${apiport}"
  iptables -t nat -I PREROUTING 1 -i "$BRIDGE" -j "$CHAIN"
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat >"$STATE/cni/net.d/10-llmto.conflist" <<EOC
{
  "cniVersion": "1.0.0",
  "name": "llmto-${BRIDGE}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "${SUBNET}", "rangeStart": "${SUBNET_PREFIX}.10", "rangeEnd": "${SUBNET_PREFIX}.250", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "10.0.0.0/24", "gw": "${NODE_IP}"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}
  ]
}
EOC
}

teardown_network() {
  local t parent
  for t in filter nat; do
    case $t in filter) parent=FORWARD ;; nat) parent=PREROUTING ;; esac
    # every jump to our chain (a failed `up` may have left two), then the chain
    while iptables -t "$t" -S "$parent" 2>/dev/null | grep -q -- "-j ${CHAIN}\$"; do
      iptables -t "$t" -S "$parent" | grep -- "-j ${CHAIN}\$" | head -n1 | sed 's/^-A /-D /' \
        | xargs iptables -t "$t" || break
    done
    if iptables -t "$t" -S "$CHAIN" >/dev/null 2>&1; then
      iptables -t "$t" -F "$CHAIN"; iptables -t "$t" -X "$CHAIN"
    fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; log "removed bridge ${BRIDGE}"; fi
}

# ---- components ------------------------------------------------------------------
write_configs() {
  local ports="$STATE/ports.env"
  cat >"$ports" <<EOP
KUBELET_PORT=$(free_port)
KUBELET_HEALTHZ_PORT=$(free_port)
COREDNS_HEALTH_PORT=$(free_port)
COREDNS_READY_PORT=$(free_port)
EOP
  # shellcheck disable=SC1090
  source "$ports"
  cat >"$STATE/containerd.toml" <<EOT
version = 3
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/containerd.sock"
[ttrpc]
  address = "$STATE/containerd.sock.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["${CNI_BIN_DIR}"]
    conf_dir = "$STATE/cni/net.d"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "${PAUSE_IMAGE}"
[plugins.'io.containerd.grpc.v1.cri']
  [plugins.'io.containerd.grpc.v1.cri'.x509_key_pair_streaming]
    tls_cert_file = ""
EOT
  : >"$STATE/resolv.conf"   # the pods' base resolv.conf: nothing from this machine's
  cat >"$STATE/kubelet.yaml" <<EOK
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
tlsCertFile: $STATE/pki/kubelet-serving.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$STATE/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /llmto-${BRIDGE}
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
clusterDNS: [${CLUSTER_DNS}]
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
podLogsDir: $STATE/pod-logs
registerWithTaints:
- {key: llmtraining.dev/real-node, value: "true", effect: NoSchedule}
maxPods: 30
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
protectKernelDefaults: false
localStorageCapacityIsolation: true
EOK
  cat >"$STATE/Corefile" <<EOC
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${NODE_IP}
    errors
    health 127.0.0.1:${COREDNS_HEALTH_PORT}
    ready 127.0.0.1:${COREDNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig
        pods insecure
        ttl 5
    }
    cache 5
    loadbalance
}
.:53 {
    bind ${NODE_IP}
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOC
}

ctr_() { "$BIN_DIR/ctr" --address "$STATE/containerd.sock" -n k8s.io "$@"; }

start_containerd() {
  mkdir -p "$STATE/containerd"
  PATH="$BIN_DIR:$PATH" start containerd "$BIN_DIR/containerd" --config "$STATE/containerd.toml"
  wait_for "containerd" 60 "" "$BIN_DIR/ctr" --address "$STATE/containerd.sock" version
}

# the kubelet's cgroupRoot, in every cgroup v1 hierarchy (it creates kubepods/ below but not the root)
make_cgroup_root() {
  local d cg
  for d in /sys/fs/cgroup/*/; do
    [[ -f "$d/cgroup.procs" ]] || continue
    cg="${d%/}/llmto-${BRIDGE}"; mkdir -p "$cg"
    if [[ -f "$cg/cpuset.cpus" ]]; then
      cat "${d%/}/cpuset.cpus" >"$cg/cpuset.cpus"; cat "${d%/}/cpuset.mems" >"$cg/cpuset.mems"
    fi
  done
}

start_kubelet() {
  make_cgroup_root
  start kubelet "$BIN_DIR/kubelet" --config="$STATE/kubelet.yaml" --kubeconfig="$STATE/kubelet.kubeconfig" \
    --root-dir="$STATE/kubelet" --cert-dir="$STATE/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels="llmtraining.dev/real-node=true" --v=1
  wait_for "kubelet /healthz" 90 kubelet curl -sf --max-time 2 "http://127.0.0.1:${KUBELET_HEALTHZ_PORT}/healthz"
}

start_coredns() {
  kc apply -f - >/dev/null <<EOR
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "llmto:coredns"}
rules:
- {apiGroups: [""], resources: [services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "llmto:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "llmto:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "llmto:coredns"}
EOR
  start coredns "$BIN_DIR/coredns" -conf "$STATE/Corefile"
  wait_for "coredns /ready" 60 coredns curl -sf --max-time 2 "http://127.0.0.1:${COREDNS_READY_PORT}/ready"
}

node_ready() {
  kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

cmd_up() {
  [[ -f "${CP_DIR}/kubeconfig" && -f "${PKI}/ca.key" ]] || die "no control plane in ${CP_DIR} (hack/controlplane.sh up first)"
  CP_BIN="$(cat "${CP_DIR}/bin_dir")"
  if [[ -d "$STATE" ]]; then log "stale real node state: cleaning up first"; cmd_down; fi
  for c in runc iptables ip; do command -v "$c" >/dev/null || die "$c missing: hack/realnode.sh deps"; done
  [[ -x "${CNI_BIN_DIR}/bridge" ]] || die "CNI plugins missing in ${CNI_BIN_DIR}: hack/realnode.sh deps"
  # checked before anything is set up, so that the clean-up of a failed `up` never touches them
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    # the bridge's alias names the state dir that made it: a dir whose kubelet is gone left it behind
    # (a killed session); a live one is another real node
    local owner; owner="$(cat "/sys/class/net/${BRIDGE}/ifalias" 2>/dev/null || true)"
    if [[ "$owner" == llmto:* ]] && ! STATE="${owner#llmto:}" alive_pid kubelet >/dev/null; then
      log "cleaning up after a real node that is gone (${owner#llmto:})"; (STATE="${owner#llmto:}"; cmd_down)
    else
      die "bridge ${BRIDGE} exists: another real node? (REALNODE_BRIDGE picks another)"
    fi
  fi
  ip -4 route show | grep -q "^${SUBNET} " && die "${SUBNET} is already routed on this machine (REALNODE_SUBNET_PREFIX)"
  cmd_build
  local t0=$SECONDS
  mkdir -p "$STATE"/{logs,pids,pki,pod-logs}
  trap 'rc=$?; if ((rc != 0)); then log "up failed; tearing the real node down (logs in ${STATE}/logs are removed: copied to ${CP_DIR}/logs/realnode-failed)"; mkdir -p "${CP_DIR}/logs"; cp -r "$STATE/logs" "${CP_DIR}/logs/realnode-failed" 2>/dev/null; cmd_down; fi' EXIT
  sign kubelet-client "/O=system:nodes/CN=system:node:${NODE_NAME}" clientAuth
  sign kubelet-serving "/CN=${NODE_NAME}" serverAuth "IP:${NODE_IP},DNS:${NODE_NAME}"
  sign coredns "/CN=llmto:coredns" clientAuth
  kubeconfig "$STATE/kubelet.kubeconfig" kubelet-client
  kubeconfig "$STATE/coredns.kubeconfig" coredns
  setup_network
  write_configs
  start_containerd
  build_pause_image
  ctr_ images import --no-unpack=false "$PAUSE_TAR" >/dev/null
  start_kubelet
  wait_for "node ${NODE_NAME} Ready" 120 kubelet node_ready
  start_coredns
  trap - EXIT
  log "real node ${NODE_NAME} up in $((SECONDS - t0))s (node IP ${NODE_IP}, pods ${SUBNET}, DNS ${CLUSTER_DNS})"
}

# ---- pause image: a static Go binary in a one-layer image ------------------------
PAUSE_IMAGE="localhost/llmto/pause:1"
PAUSE_TAR="${BUILD_DIR}/pause.tar"
build_pause_image() {
  [[ -s "$PAUSE_TAR" ]] && return
  local dir; dir="$(module_dir pause)"
  printf 'module llmto.local/realnode/pause\n\ngo 1.26.0\n' >"$dir/go.mod"
  cat >"$dir/main.go" <<'EOG'
// The pod sandbox's process: holds the namespaces until told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	<-ch
}
EOG
  go_env "$CP_CACHE"
  (cd "$dir" && "$GO" build -trimpath -ldflags="-s -w" -o "$dir/pause" .)
  local root="$dir/rootfs"; rm -rf "$root"; mkdir -p "$root"; cp "$dir/pause" "$root/pause"
  # one-layer docker-archive by hand (no buildah needed for it)
  python3 - "$root" "$PAUSE_TAR" "$PAUSE_IMAGE" <<'EOP'
import hashlib, io, json, sys, tarfile
root, out, ref = sys.argv[1:]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    info = t.gettarinfo(f"{root}/pause", arcname="pause"); info.uid = info.gid = 0; info.mode = 0o755
    info.mtime = 0
    with open(f"{root}/pause", "rb") as f: t.addfile(info, f)
data = layer.getvalue(); diff = "sha256:" + hashlib.sha256(data).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
cname = hashlib.sha256(config).hexdigest() + ".json"
with tarfile.open(out, "w") as t:
    def add(name, b):
        i = tarfile.TarInfo(name); i.size = len(b); t.addfile(i, io.BytesIO(b))
    add("layer.tar", data); add(cname, config)
    add("manifest.json", json.dumps([{"Config": cname, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode())
EOP
}

# ================================================================ down =====
cmd_down() {
  [[ -d "$STATE" ]] || { log "no real node state in ${STATE}"; teardown_network; return 0; }
  CP_BIN="$(cat "${CP_DIR}/bin_dir" 2>/dev/null || true)"
  local pid
  # let the kubelet stop the pods it runs (CNI DEL, volumes unmounted) while the API server is there
  if alive_pid kubelet >/dev/null && [[ -n "$CP_BIN" ]] && kc get node "$NODE_NAME" >/dev/null 2>&1; then
    kc delete pods -A --field-selector "spec.nodeName=${NODE_NAME}" --grace-period=1 --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)) && [[ -n "$(ctr_ tasks ls -q 2>/dev/null)" ]]; do sleep 1; done
  fi
  for c in coredns kubelet; do
    if pid="$(alive_pid "$c")"; then log "stopping ${c} (pid ${pid})"; kill -TERM "$pid"; wait_gone "$pid"; fi
  done
  # whatever the kubelet left: kill the tasks, then containerd
  if alive_pid containerd >/dev/null; then
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 1
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    pid="$(alive_pid containerd)"; log "stopping containerd (pid ${pid})"; kill -TERM "$pid"; wait_gone "$pid"
  fi
  # shims of our containerd (they outlive it by design)
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address ${STATE}/containerd.sock" || true); do
    log "killing leftover shim ${pid}"; kill -KILL "$pid" 2>/dev/null || true
  done
  # mounts under our state dir (rootfs, netns, shm, volumes), deepest first
  local m
  for m in $(awk -v p="$STATE/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount ${m}"
  done
  # the kubelet's cgroups
  local cg
  for cg in /sys/fs/cgroup/*/llmto-"${BRIDGE}"; do
    [[ -d "$cg" ]] || continue
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || log "could not remove cgroup ${cg}"
  done
  # the kubelet's links to our pod logs
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  teardown_network
  if [[ -n "$CP_BIN" ]] && [[ -f "${CP_DIR}/kubeconfig" ]]; then
    kc delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE"
  log "real node down"
}
wait_gone() { local i; for i in $(seq 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -KILL "$1" 2>/dev/null || true; }

cmd_status() {
  local c pid rc=0
  [[ -d "$STATE" ]] || { echo "real node: down"; return 1; }
  for c in containerd kubelet coredns; do
    if pid="$(alive_pid "$c")"; then printf '%-12s running (pid %s)\n' "$c" "$pid"; else printf '%-12s NOT running\n' "$c"; rc=1; fi
  done
  return $rc
}

main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    build) cmd_build "$@" ;;
    deps) cmd_deps "$@" ;;
    bin-dir) echo "$BIN_DIR" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
}
main "$@"; exit $?
