#!/usr/bin/env bash
# Local Kubernetes control plane for e2e tests, built from Go modules.
#
#   hack/controlplane.sh build   # build pinned binaries into the cache (seconds when warm)
#   hack/controlplane.sh up      # start etcd, apiserver, controller-manager, scheduler, kwok + 3 fake GPU nodes
#   hack/controlplane.sh up --real-node  # also a real node (containerd, kubelet, CoreDNS): hack/realnode.sh
#   hack/controlplane.sh down    # stop what `up` started (the real node too) and remove the state dir
#   hack/controlplane.sh env     # print `export KUBECONFIG=...; export PATH=...`
#   hack/controlplane.sh status  # show component pids and health (exit 0 only when healthy)
#   hack/controlplane.sh restart COMPONENT  # stop one component (e.g. kube-apiserver) and start it again
#   hack/controlplane.sh stop COMPONENT     # stop one component until `restart COMPONENT` (a cluster down, for MultiKueue)
#   hack/controlplane.sh bin-dir # print the cached bin dir (kubectl, helm, kwok, etcd, kube-*)
#
# Everything listens on 127.0.0.1. Nothing is downloaded except Go modules (GOPROXY).
# Wrapper go.mod files are generated into the cache (see write_module); go.sum is verified
# against the checksum database as usual.
#
# Environment:
#   LLMTO_CACHE              cache root (default ~/.cache/llm-training-operator); binaries in
#                            $LLMTO_CACHE/controlplane/<versions-hash>/bin, GOMODCACHE/GOCACHE beside
#   LLMTO_CP_DIR             state dir: pki, kubeconfigs, etcd data, logs/, pids/ (default /tmp/llmto-controlplane)
#   LLMTO_CP_NODES           number of fake GPU nodes (default 3)
#   LLMTO_CP_NODE_GPUS       nvidia.com/gpu capacity of each node (default 8)
#   LLMTO_CP_NODE_PODS       pod capacity of each node (default 110)
#   LLMTO_CP_AUDIT           "1": the API server writes an audit log (one JSON line per request, metadata only,
#                            the control plane's own components left out) to logs/audit.log; policy in
#                            hack/controlplane/audit-policy.yaml. Off by default (it costs API server CPU).
#   LLMTO_CP_FEATURE_GATES   feature gates of the API server, controller-manager and scheduler (default GenericWorkload=true:
#                            kube-scheduler's own gang scheduling, the scheduling.k8s.io/v1beta1 Workload and PodGroup
#                            APIs, which the API server then serves, and the controller-manager's PodGroup protection
#                            controller that removes their finalizer). Empty: none. Also read by `restart`, so one
#                            test can turn a gate on for a while and back off again, e.g. kube-scheduler's
#                            topology constraint for gangs (PodGroup schedulingConstraints.topology):
#                            LLMTO_CP_FEATURE_GATES=GenericWorkload=true,TopologyAwareWorkloadScheduling=true \
#                              hack/controlplane.sh restart kube-apiserver   (and kube-scheduler)
#   LLMTO_CP_APISERVER_PORT, LLMTO_CP_ETCD_PORT, LLMTO_CP_ETCD_PEER_PORT   fixed ports (default: free ones)
#   LLMTO_CP_ETCD_QUOTA_MB   etcd's space quota (default 512; past it every write fails: benchmarks of 10,000 jobs need more)
#   GO                       go binary (default: go on PATH)
#
# Nodes: kwok-gpu-0..N-1, labels type=kwok, nvidia.com/gpu.present=true, nvidia.com/gpu.count=8;
#   taint nvidia.com/gpu=present:NoSchedule; capacity cpu 32, memory 256Gi, pods 110, nvidia.com/gpu 8
#   (pods and GPUs: see LLMTO_CP_NODE_PODS, LLMTO_CP_NODE_GPUS).
# Pods: scheduled pods become Running/Ready (kwok stock pod-ready); annotate with
#   kwok.llmtraining.dev/exit-code: "N" to end them (0 -> Succeeded, else Failed), see
#   hack/controlplane/stages/pod-exit.yaml.
set -euo pipefail

# ---------------------------------------------------------------- versions --
K8S_VERSION="v1.37.2"      # k8s.io/kubernetes (staging modules at v0.37.2)
ETCD_VERSION="v3.6.16"     # go.etcd.io/etcd/server/v3
KWOK_VERSION="v0.8.0"      # sigs.k8s.io/kwok
HELM_VERSION="v3.22.0"     # helm.sh/helm/v3
BUILD_REV="1"              # bump to force a rebuild after changing build flags below

# Staging modules that k8s.io/kubernetes replaces with ./staging/src/k8s.io/<name>.
K8S_STAGING_MODULES=(
  api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base component-helpers
  controller-manager cri-api cri-client cri-streaming csi-translation-lib
  dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver streaming
)
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

# ------------------------------------------------------------------ paths --
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="${ROOT}/hack/controlplane"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
CACHE_ROOT="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}/controlplane"
VERSIONS_HASH="$(printf '%s\n' "$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$HELM_VERSION" "$BUILD_REV" \
  "$("$GO" env GOVERSION 2>/dev/null || echo go?)" "${K8S_STAGING_MODULES[*]}" | sha256sum | cut -c1-12)"
BUILD_DIR="${CACHE_ROOT}/${VERSIONS_HASH}"
BIN_DIR="${BUILD_DIR}/bin"
STATE_DIR="${LLMTO_CP_DIR:-/tmp/llmto-controlplane}"
FEATURE_GATES="${LLMTO_CP_FEATURE_GATES-GenericWorkload=true}"
# A beta API is off unless asked for: serve the gang scheduling group version when its gate is on.
gate_flags() { [[ -n "$FEATURE_GATES" ]] && echo "--feature-gates=${FEATURE_GATES}"; return 0; }
runtime_config_flags() {
  [[ ",${FEATURE_GATES}," == *",GenericWorkload=true,"* ]] && echo "--runtime-config=scheduling.k8s.io/v1beta1=true"; return 0
}

log() { printf '[controlplane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ================================================================= build ====
# shellcheck source=lib/go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-env.sh"
# shellcheck source=lib/spawn.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/spawn.sh"

# write_module NAME REQUIRE... : create wrapper module ${BUILD_DIR}/src/NAME with go.mod
write_module() {
  local name="$1"; shift
  local dir="${BUILD_DIR}/src/${name}"
  mkdir -p "$dir"
  {
    echo "module llmto.local/controlplane/${name}"
    echo
    echo "go 1.26.0"
    echo
    echo "require ("
    local r; for r in "$@"; do echo "	$r"; done
    echo ")"
  } >"$dir/go.mod.new"
  if [[ "$name" == k8s ]]; then
    local minor="${K8S_VERSION#v1.}" m
    {
      echo
      echo "replace ("
      for m in "${K8S_STAGING_MODULES[@]}"; do echo "	k8s.io/${m} => k8s.io/${m} v0.${minor}"; done
      echo ")"
    } >>"$dir/go.mod.new"
  fi
  # keep an existing (tidied-by-build) go.mod if the requested content did not change
  if ! cmp -s "$dir/go.mod.new" "$dir/go.mod.requested" 2>/dev/null; then
    cp "$dir/go.mod.new" "$dir/go.mod"
    mv "$dir/go.mod.new" "$dir/go.mod.requested"
  else
    rm -f "$dir/go.mod.new"
  fi
  echo "$dir"
}

stamp_ok() { [[ -f "${BIN_DIR}/.stamp-$1" && "$(cat "${BIN_DIR}/.stamp-$1")" == "$2" ]]; }
stamp() { echo "$2" >"${BIN_DIR}/.stamp-$1"; }

build_etcd() {
  stamp_ok etcd "$ETCD_VERSION" && [[ -x "$BIN_DIR/etcd" ]] && { log "etcd ${ETCD_VERSION}: cached"; return; }
  local dir t0=$SECONDS; dir="$(write_module etcd "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}")"
  log "building etcd ${ETCD_VERSION} ..."
  (cd "$dir" && "$GO" build -trimpath -ldflags="-s -w" -o "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$ETCD_VERSION"; log "etcd built in $((SECONDS - t0))s"
}

build_k8s() {
  local b ok=1
  for b in "${K8S_BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || ok=0; done
  stamp_ok k8s "$K8S_VERSION" && ((ok)) && { log "kubernetes ${K8S_VERSION}: cached"; return; }
  local dir t0=$SECONDS; dir="$(write_module k8s "k8s.io/kubernetes ${K8S_VERSION}")"
  local major minor pkgs=() ldflags="-s -w" p
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${p}.gitVersion=${K8S_VERSION} -X ${p}.gitMajor=${major} -X ${p}.gitMinor=${minor}"
    ldflags+=" -X ${p}.gitTreeState=clean -X ${p}.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  log "building ${K8S_BINARIES[*]} ${K8S_VERSION} (cold: ~20-25 min on 2 cores; warm Go cache: <1 min) ..."
  (cd "$dir" && "$GO" build -trimpath -ldflags="$ldflags" -o "$BIN_DIR/" "${pkgs[@]}")
  stamp k8s "$K8S_VERSION"; log "kubernetes built in $((SECONDS - t0))s"
}

build_kwok() {
  stamp_ok kwok "$KWOK_VERSION" && [[ -x "$BIN_DIR/kwok" ]] && { log "kwok ${KWOK_VERSION}: cached"; return; }
  local dir t0=$SECONDS; dir="$(write_module kwok "sigs.k8s.io/kwok ${KWOK_VERSION}")"
  log "building kwok ${KWOK_VERSION} ..."
  (cd "$dir" && "$GO" build -trimpath \
    -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    -o "$BIN_DIR/kwok" sigs.k8s.io/kwok/cmd/kwok)
  # stock stages ship inside the module: keep a copy next to the binary
  local src; src="$(go_module_dir "$CACHE_ROOT" "$dir" sigs.k8s.io/kwok)"
  rm -rf "$BIN_DIR/kwok-stages"; mkdir -p "$BIN_DIR/kwok-stages"
  cp -r "$src/kustomize/stage/." "$BIN_DIR/kwok-stages/"; chmod -R u+w "$BIN_DIR/kwok-stages"
  stamp kwok "$KWOK_VERSION"; log "kwok built in $((SECONDS - t0))s"
}

build_helm() {
  stamp_ok helm "$HELM_VERSION" && [[ -x "$BIN_DIR/helm" ]] && { log "helm ${HELM_VERSION}: cached"; return; }
  local dir t0=$SECONDS; dir="$(write_module helm "helm.sh/helm/v3 ${HELM_VERSION}")"
  log "building helm ${HELM_VERSION} ..."
  (cd "$dir" && "$GO" build -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    -o "$BIN_DIR/helm" helm.sh/helm/v3/cmd/helm)
  stamp helm "$HELM_VERSION"; log "helm built in $((SECONDS - t0))s"
}

# remove binaries of other version sets (~500 MiB each) unless a running process uses them
prune_old_builds() {
  local d exe in_use
  for d in "$CACHE_ROOT"/*/; do
    d="${d%/}"
    [[ "$(basename "$d")" =~ ^[0-9a-f]{12}$ && "$d" != "$BUILD_DIR" ]] || continue
    in_use=0
    for exe in /proc/[0-9]*/exe; do
      [[ "$(readlink "$exe" 2>/dev/null)" == "$d/"* ]] && { in_use=1; break; }
    done
    if ((in_use)); then log "keeping old build $(basename "$d") (in use)"
    else log "removing old build $(basename "$d")"; rm -rf "$d"; fi
  done
}

cmd_build() {
  local t0=$SECONDS
  mkdir -p "$BIN_DIR"
  go_env "$CACHE_ROOT"
  log "cache: ${BUILD_DIR} ($("$GO" env GOVERSION))"
  build_etcd
  build_kwok
  build_helm
  build_k8s
  prune_old_builds
  log "build done in $((SECONDS - t0))s; binaries in ${BIN_DIR}"
}

# ================================================================== up =====
# Fake GPU nodes managed by kwok.
NODE_COUNT="${LLMTO_CP_NODES:-3}"
NODE_GPUS="${LLMTO_CP_NODE_GPUS:-8}"
NODE_PODS="${LLMTO_CP_NODE_PODS:-110}"
NODE_PREFIX="kwok-gpu-"
NODE_SELECTOR="type=kwok"
# Stock kwok stages (from the kwok module, copied next to the binary at build time) + ours.
KWOK_STOCK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-delete.yaml
)
# Components in start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

PKI="${STATE_DIR}/pki"
LOGS="${STATE_DIR}/logs"
PIDS="${STATE_DIR}/pids"
KUBECONFIG_PATH="${STATE_DIR}/kubeconfig"
AUDIT_POLICY="${STATE_DIR}/audit-policy.yaml"  # present iff `up` ran with LLMTO_CP_AUDIT=1 (restarts keep it)

kc() { "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_PATH" "$@"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ports are chosen once per `up` and saved, so `status`/`env` and restarts agree
choose_ports() {
  cat >"${STATE_DIR}/ports.env" <<EOP
ETCD_PORT=${LLMTO_CP_ETCD_PORT:-$(free_port)}
ETCD_PEER_PORT=${LLMTO_CP_ETCD_PEER_PORT:-$(free_port)}
APISERVER_PORT=${LLMTO_CP_APISERVER_PORT:-$(free_port)}
KCM_PORT=$(free_port)
SCHEDULER_PORT=$(free_port)
KWOK_PORT=$(free_port)
EOP
}
load_ports() { # shellcheck disable=SC1091
  source "${STATE_DIR}/ports.env"; }

# ---- certificates ----------------------------------------------------------
# sign_cert NAME SUBJECT EXTENDED_KEY_USAGE [SAN]
sign_cert() {
  local name="$1" subj="$2" eku="$3" san="${4:-}"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

gen_pki() {
  mkdir -p "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=llmto-controlplane-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  sign_cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign_cert controller-manager-serving "/CN=kube-controller-manager" serverAuth "IP:127.0.0.1,DNS:localhost"
  sign_cert scheduler-serving "/CN=kube-scheduler" serverAuth "IP:127.0.0.1,DNS:localhost"
  sign_cert admin "/O=system:masters/CN=llmto-admin" clientAuth
  sign_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  sign_cert scheduler "/CN=system:kube-scheduler" clientAuth
  sign_cert kwok "/O=system:masters/CN=kwok-controller" clientAuth
  # request-header (front proxy) client cert for the aggregation layer; same CA, fixed CN
  sign_cert front-proxy-client "/CN=front-proxy-client" clientAuth
  # the API server's client cert towards kubelets (logs, exec): only a real node has one (hack/realnode.sh)
  sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  # service-account token signing key pair
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

# write_kubeconfig FILE CERT_NAME USER
write_kubeconfig() {
  local file="$1" cert="$2" user="$3"
  cat >"$file" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: llmto
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$cert.crt")
    client-key-data: $(base64 -w0 <"$PKI/$cert.key")
contexts:
- name: llmto
  context:
    cluster: llmto
    user: ${user}
current-context: llmto
EOK
  chmod 600 "$file"
}

# ---- process management ------------------------------------------------------
# start NAME BINARY ARGS... : run detached, log to logs/NAME.log, pid in pids/NAME.pid
start() {
  local name="$1"; shift
  log "starting ${name}"
  spawn "$PIDS/$name.pid" "$LOGS/$name.log" "$@"
}

# pid of component NAME if it is running and is the binary we started
alive_pid() {
  local name="$1" pid bin="$BIN_DIR"
  [[ -s "$PIDS/$name.pid" ]] || return 1
  [[ -s "$STATE_DIR/bin_dir" ]] && bin="$(cat "$STATE_DIR/bin_dir")"  # the binaries `up` used
  pid="$(cat "$PIDS/$name.pid")"
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "^${bin}/" || return 1
  echo "$pid"
}

# wait_for WHAT TIMEOUT_S COMPONENT CMD... : poll CMD until it succeeds; fail with log tail
wait_for() {
  local what="$1" timeout="$2" comp="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! alive_pid "$comp" >/dev/null; then
      tail -n 30 "$LOGS/$comp.log" >&2 || true
      die "${comp} exited while waiting for ${what} (log: $LOGS/$comp.log)"
    fi
    if ((SECONDS >= deadline)); then
      [[ -n "$comp" ]] && { tail -n 30 "$LOGS/$comp.log" >&2 || true; }
      die "timed out after ${timeout}s waiting for ${what}"
    fi
    sleep 0.5
  done
  log "${what}: ok"
}

https_ok() { # https_ok URL : GET with the admin client cert, require HTTP 200 "ok"
  curl -sf --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$1" | grep -qx ok
}

# ---- components ---------------------------------------------------------------
start_etcd() {
  start etcd "$BIN_DIR/etcd" \
    --name=llmto --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="llmto=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --quota-backend-bytes=$((${LLMTO_CP_ETCD_QUOTA_MB:-512} * 1024 * 1024)) \
    --auto-compaction-mode=periodic --auto-compaction-retention=5m \
    --snapshot-count=5000 --unsafe-no-fsync=true --log-level=warn
  wait_for "etcd /health" 60 etcd curl -sf --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health"
}

start_apiserver() {
  local audit=()
  if [[ -f "$AUDIT_POLICY" ]]; then
    audit=(--audit-policy-file="$AUDIT_POLICY" --audit-log-path="$LOGS/audit.log" --audit-log-format=json)
  fi
  start kube-apiserver "$BIN_DIR/kube-apiserver" "${audit[@]}" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="${APISERVER_PORT}" \
    --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    $(gate_flags) $(runtime_config_flags) \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --event-ttl=30m --profiling=false \
    --v=1
  wait_for "kube-apiserver /readyz" 120 kube-apiserver https_ok "https://127.0.0.1:${APISERVER_PORT}/readyz"
}

start_controller_manager() {
  local kcfg="$STATE_DIR/controller-manager.kubeconfig"
  write_kubeconfig "$kcfg" controller-manager system:kube-controller-manager
  start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$kcfg" --authentication-kubeconfig="$kcfg" --authorization-kubeconfig="$kcfg" \
    --bind-address=127.0.0.1 --secure-port="${KCM_PORT}" \
    --tls-cert-file="$PKI/controller-manager-serving.crt" \
    --tls-private-key-file="$PKI/controller-manager-serving.key" \
    --controllers='*' --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --leader-elect=false --profiling=false \
    $(gate_flags) \
    --v=1
  wait_for "kube-controller-manager /healthz" 60 kube-controller-manager \
    curl -skf --max-time 2 "https://127.0.0.1:${KCM_PORT}/healthz"
}

start_scheduler() {
  local kcfg="$STATE_DIR/scheduler.kubeconfig"
  write_kubeconfig "$kcfg" scheduler system:kube-scheduler
  start kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig="$kcfg" --authentication-kubeconfig="$kcfg" --authorization-kubeconfig="$kcfg" \
    --bind-address=127.0.0.1 --secure-port="${SCHEDULER_PORT}" \
    --tls-cert-file="$PKI/scheduler-serving.crt" --tls-private-key-file="$PKI/scheduler-serving.key" \
    --leader-elect=false --profiling=false \
    $(gate_flags) \
    --v=1
  wait_for "kube-scheduler /healthz" 60 kube-scheduler \
    curl -skf --max-time 2 "https://127.0.0.1:${SCHEDULER_PORT}/healthz"
}

create_nodes() {
  local i name
  for ((i = 0; i < NODE_COUNT; i++)); do
    name="${NODE_PREFIX}${i}"
    cat <<EON
---
apiVersion: v1
kind: Node
metadata:
  name: ${name}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: ${name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node.kubernetes.io/instance-type: kwok-gpu-8x
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.count: "8"
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3
spec:
  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule
status:
  capacity: &res
    cpu: "32"
    memory: 256Gi
    pods: "${NODE_PODS}"
    ephemeral-storage: 1Ti
    nvidia.com/gpu: "${NODE_GPUS}"
  allocatable: *res
EON
  done | kc apply -f - >/dev/null
  log "created ${NODE_COUNT} kwok GPU nodes (${NODE_PREFIX}0..$((NODE_COUNT - 1)))"
}

start_kwok() {
  local kcfg="$STATE_DIR/kwok.kubeconfig" cfg="$STATE_DIR/kwok.yaml" f
  write_kubeconfig "$kcfg" kwok kwok-controller
  # stages only: a KwokConfiguration document would bypass kwok's option defaulting
  {
    for f in "${KWOK_STOCK_STAGES[@]}"; do echo "---"; cat "$BIN_DIR/kwok-stages/$f"; done
    for f in "$HERE"/stages/*.yaml; do echo "---"; cat "$f"; done
  } >"$cfg"
  start kwok "$BIN_DIR/kwok" --config="$cfg" --kubeconfig="$kcfg" \
    --manage-all-nodes=false --manage-nodes-with-label-selector="${NODE_SELECTOR}" \
    --node-lease-duration-seconds=40 \
    --node-ip=127.0.0.1 --cidr=127.244.0.1/16 \
    --server-address="127.0.0.1:${KWOK_PORT}"
  wait_for "kwok /healthz" 60 kwok curl -sf --max-time 2 "http://127.0.0.1:${KWOK_PORT}/healthz"
}

# shellcheck disable=SC2329  # used via wait_for
nodes_ready() {
  local ready
  ready="$(kc get nodes -l "${NODE_SELECTOR}" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')"
  ((ready == NODE_COUNT))
}

# the controller-manager must have created the default ServiceAccount before pods can be created
# shellcheck disable=SC2329  # used via wait_for
default_sa_exists() { kc -n default get serviceaccount default; }

healthy() {
  [[ -f "${STATE_DIR}/ports.env" ]] || return 1
  load_ports
  local c; for c in "${COMPONENTS[@]}"; do alive_pid "$c" >/dev/null || return 1; done
  https_ok "https://127.0.0.1:${APISERVER_PORT}/readyz"
}

print_env() {
  echo "export PATH=\"${BIN_DIR}:\$PATH\""
  echo "export KUBECONFIG=${KUBECONFIG_PATH}"
}

cmd_up() {
  local real_node=0
  [[ "${1:-}" == --real-node ]] && real_node=1
  if healthy; then
    log "control plane already up (state: ${STATE_DIR})"
    if ((real_node)); then up_real_node; fi
    print_env; return
  fi
  if [[ -d "$STATE_DIR" ]]; then
    log "stale state in ${STATE_DIR}: cleaning up first"
    cmd_down
  fi
  cmd_build
  local t0=$SECONDS
  mkdir -p "$STATE_DIR" "$LOGS" "$PIDS"
  # on failure: stop whatever was started, keep the logs for inspection (next `up` cleans them)
  trap 'rc=$?; if ((rc != 0)); then log "up failed; stopping components, logs kept in ${LOGS}"; stop_all; fi' EXIT
  echo "$BIN_DIR" >"$STATE_DIR/bin_dir"
  if [[ "${LLMTO_CP_AUDIT:-0}" == 1 ]]; then cp "$HERE/audit-policy.yaml" "$AUDIT_POLICY"; fi
  choose_ports; load_ports
  gen_pki
  write_kubeconfig "$KUBECONFIG_PATH" admin llmto-admin
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  create_nodes
  start_kwok
  wait_for "${NODE_COUNT} nodes Ready" 120 kwok nodes_ready
  wait_for "default ServiceAccount" 60 kube-controller-manager default_sa_exists
  if ((real_node)); then up_real_node; fi
  trap - EXIT
  log "control plane up in $((SECONDS - t0))s: apiserver https://127.0.0.1:${APISERVER_PORT}, logs in ${LOGS}"
  print_env
}

# stop exactly the processes recorded in the pid files: everything but etcd together, then etcd
stop_all() {
  local c pid stopping=()
  local group
  for group in "kwok kube-scheduler kube-controller-manager kube-apiserver" "etcd"; do
    stopping=()
    for c in $group; do
      pid="$(alive_pid "$c")" || continue
      log "stopping ${c} (pid ${pid})"
      kill -TERM "$pid" 2>/dev/null || true
      stopping+=("$pid")
    done
    for pid in "${stopping[@]}"; do
      for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then log "pid ${pid} did not stop, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    done
  done
}

# SIGTERM one component, SIGKILL after 15 s
stop_component() {
  local name="$1" pid
  if pid="$(alive_pid "$name")"; then
    log "stopping ${name} (pid ${pid})"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

# stop COMPONENT: it stays down (e.g. kube-apiserver: the cluster is unreachable) until `restart COMPONENT`
cmd_stop() {
  local name="${1:-}"
  [[ " ${COMPONENTS[*]} " == *" ${name} "* ]] || die "usage: stop ${COMPONENTS[*]// /|}"
  [[ -f "${STATE_DIR}/ports.env" ]] || die "no control plane in ${STATE_DIR}"
  stop_component "$name"
}

# restart COMPONENT: as a crash and a supervisor would (SIGTERM, then the same command line, same ports); also
# starts a component that `stop` stopped
cmd_restart() {
  local name="${1:-}"
  [[ " ${COMPONENTS[*]} " == *" ${name} "* ]] || die "usage: restart ${COMPONENTS[*]// /|}"
  [[ -f "${STATE_DIR}/ports.env" ]] || die "no control plane in ${STATE_DIR}"
  load_ports
  stop_component "$name"
  mv "$LOGS/$name.log" "$LOGS/$name.log.$(date +%s)" 2>/dev/null || true
  case "$name" in
    etcd) start_etcd ;;
    kube-apiserver) start_apiserver ;;
    kube-controller-manager) start_controller_manager ;;
    kube-scheduler) start_scheduler ;;
    kwok) start_kwok ;;
  esac
}

# the real node (hack/realnode.sh): containerd, kubelet, CoreDNS, a bridge network; state in $STATE_DIR/realnode
up_real_node() {
  LLMTO_CP_DIR="$STATE_DIR" bash "$ROOT/hack/realnode.sh" status >/dev/null 2>&1 && { log "real node already up"; return; }
  LLMTO_CP_DIR="$STATE_DIR" bash "$ROOT/hack/realnode.sh" up 9>&-
}

cmd_down() {
  bash "$ROOT/hack/kueue.sh" down 2>/dev/null || true  # Kueue (hack/kueue.sh), if it was started on this control plane
  if [[ -d "$STATE_DIR/realnode" ]]; then LLMTO_CP_DIR="$STATE_DIR" bash "$ROOT/hack/realnode.sh" down 9>&- || true; fi
  stop_all
  # refuse to delete anything that does not look like our state dir
  if [[ -d "$STATE_DIR" ]]; then
    if [[ -d "$PIDS" || -f "$STATE_DIR/ports.env" ]]; then rm -rf "$STATE_DIR"
    else log "not removing ${STATE_DIR}: does not look like a control-plane state dir"; fi
  fi
  log "down"
}

cmd_status() {
  local c pid rc=0
  if [[ ! -f "${STATE_DIR}/ports.env" ]]; then echo "down (no state in ${STATE_DIR})"; return 1; fi
  load_ports
  for c in "${COMPONENTS[@]}"; do
    if pid="$(alive_pid "$c")"; then printf '%-24s running (pid %s)\n' "$c" "$pid"
    else printf '%-24s NOT running\n' "$c"; rc=1; fi
  done
  if https_ok "https://127.0.0.1:${APISERVER_PORT}/readyz"; then
    echo "apiserver https://127.0.0.1:${APISERVER_PORT}/readyz ok"
    kc get nodes -o wide || true
  else echo "apiserver not ready"; rc=1; fi
  return $rc
}

# serialize concurrent up/down on the same state dir (e.g. two pytest sessions)
lock_state() {
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"${STATE_DIR}.lock"
  flock -w 600 9 || die "could not lock ${STATE_DIR}.lock"
}

# ================================================================ main ======
main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    build) cmd_build "$@" ;;
    up) lock_state; cmd_up "$@" ;;
    down) lock_state; cmd_down "$@" ;;
    env) print_env ;;
    status) cmd_status "$@" ;;
    restart) lock_state; cmd_restart "$@" ;;
    stop) lock_state; cmd_stop "$@" ;;
    bin-dir) echo "$BIN_DIR" ;;
    *) echo "usage: $0 build|up|down|env|status|restart COMPONENT|stop COMPONENT|bin-dir" >&2; exit 2 ;;
  esac
}
main "$@"; exit $?  # keep on one line: safe to edit this file while it runs
