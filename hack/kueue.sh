#!/usr/bin/env bash
# Kueue (sigs.k8s.io/kueue) for the e2e tests, built from Go modules and run as a process against the
# local control plane of hack/controlplane.sh (same LLMTO_CP_DIR).
#
#   hack/kueue.sh build    # build the pinned kueue manager into the cache (seconds when warm)
#   hack/kueue.sh up       # install Kueue's CRDs, start the manager, register its webhooks (loopback URL)
#   hack/kueue.sh down     # stop the manager, remove its webhook configurations and state
#   hack/kueue.sh status   # exit 0 only when the manager runs and is ready
#   hack/kueue.sh bin-dir  # print the cached bin dir
#
# The manager runs on the host, so its webhooks are registered with `url: https://127.0.0.1:<port>/...`
# and a serving certificate signed by the control plane's CA (Kueue's internal cert management is off).
# Integrations: none of Kueue's own (the operator manages its Workloads: docs/scheduling.md); LLMTrainingJob is an
# external framework, and MultiKueue's generic adapter copies it to a worker cluster (see the config below).
#
# Environment: LLMTO_CACHE, LLMTO_CP_DIR, GO as for hack/controlplane.sh; PYTHON: a python3 with PyYAML. State in $LLMTO_CP_DIR/kueue/
# (config, pki, logs/kueue.log, pid).
set -euo pipefail

# ---------------------------------------------------------------- versions --
KUEUE_VERSION="v0.17.0"    # sigs.k8s.io/kueue
BUILD_REV="1"              # bump to force a rebuild after changing build flags below

# ------------------------------------------------------------------ paths --
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
CACHE="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}"
GO_CACHE_ROOT="${CACHE}/controlplane"  # GOMODCACHE/GOCACHE shared with the control-plane build
VERSIONS_HASH="$(printf '%s\n' "$KUEUE_VERSION" "$BUILD_REV" "$("$GO" env GOVERSION 2>/dev/null || echo go?)" \
  | sha256sum | cut -c1-12)"
BUILD_DIR="${CACHE}/kueue/${VERSIONS_HASH}"
BIN_DIR="${BUILD_DIR}/bin"
CP_STATE_DIR="${LLMTO_CP_DIR:-/tmp/llmto-controlplane}"
STATE_DIR="${CP_STATE_DIR}/kueue"

log() { printf '[kueue %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=lib/go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-env.sh"
# shellcheck source=lib/spawn.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/spawn.sh"

# ================================================================= build ====
cmd_build() {
  if [[ -x "$BIN_DIR/kueue" && -d "$BIN_DIR/crds" && "$(cat "$BIN_DIR/.stamp" 2>/dev/null)" == "$KUEUE_VERSION" ]]; then
    log "kueue ${KUEUE_VERSION}: cached (${BIN_DIR})"; return
  fi
  local t0=$SECONDS src="${BUILD_DIR}/src"
  mkdir -p "$BIN_DIR" "$src"
  go_env "$GO_CACHE_ROOT"
  printf 'module llmto.local/kueue\n\ngo 1.26.0\n\nrequire sigs.k8s.io/kueue %s\n' "$KUEUE_VERSION" >"$src/go.mod"
  log "building kueue ${KUEUE_VERSION} (cold: several minutes on 2 cores) ..."
  (cd "$src" && "$GO" build -trimpath \
    -ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}" \
    -o "$BIN_DIR/kueue" sigs.k8s.io/kueue/cmd/kueue)
  # the CRDs ship in the module: keep a copy next to the binary
  local mod; mod="$(go_module_dir "$GO_CACHE_ROOT" "$src" sigs.k8s.io/kueue)"
  rm -rf "$BIN_DIR/crds"; mkdir -p "$BIN_DIR/crds"
  cp "$mod"/config/components/crd/bases/*.yaml "$BIN_DIR/crds/"; chmod -R u+w "$BIN_DIR/crds"
  echo "$KUEUE_VERSION" >"$BIN_DIR/.stamp"
  log "kueue built in $((SECONDS - t0))s"
  local old  # builds of other versions (~90 MiB each), unless a manager from one still runs
  for old in "${CACHE}/kueue"/*/; do
    old="${old%/}"
    [[ "$old" == "$BUILD_DIR" ]] && continue
    pgrep -f "^${old}/bin/kueue " >/dev/null 2>&1 && continue
    log "removing old build $(basename "$old")"; rm -rf "$old"
  done
}

# ================================================================== up =====
PKI="${CP_STATE_DIR}/pki"  # the control plane's CA signs the webhook's serving certificate
KUBECONFIG_PATH="${CP_STATE_DIR}/kubeconfig"
PID_FILE="${STATE_DIR}/kueue.pid"
LOG="${STATE_DIR}/logs/kueue.log"
NAMESPACE="kueue-system"
WEBHOOK_CONFIG_PREFIX="llmto-kueue"

kc() { "$("$ROOT/hack/controlplane.sh" bin-dir 2>/dev/null | tail -n1)/kubectl" --kubeconfig="$KUBECONFIG_PATH" "$@"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

alive_pid() {
  local pid
  [[ -s "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "^${BIN_DIR}/kueue " || return 1
  echo "$pid"
}

ready() { # shellcheck disable=SC1091
  source "${STATE_DIR}/ports.env" 2>/dev/null || return 1
  alive_pid >/dev/null && curl -sf --max-time 2 "http://127.0.0.1:${HEALTH_PORT}/readyz" >/dev/null
}

# the webhook answers through the API server: a server-side dry run of a Kueue object goes through it
webhook_serves() {
  kc apply --dry-run=server -f - >/dev/null 2>&1 <<EOR
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata:
  name: llmto-webhook-probe
EOR
}

gen_cert() {
  local dir="$1"
  mkdir -p "$dir"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/tls.key" 2>/dev/null
  openssl req -new -key "$dir/tls.key" -subj "/CN=kueue-webhook" -out "$dir/tls.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/tls.ext"
  openssl x509 -req -in "$dir/tls.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -CAserial "$dir/ca.srl" \
    -days 3650 -sha256 -extfile "$dir/tls.ext" -out "$dir/tls.crt" 2>/dev/null
  rm -f "$dir/tls.csr" "$dir/tls.ext"
  chmod 600 "$dir/tls.key"
}

# Kueue's Configuration (config.kueue.x-k8s.io/v1beta2, apis/config/v1beta2/configuration_types.go).
write_config() {
  cat >"${STATE_DIR}/config.yaml" <<EOC
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: ${NAMESPACE}
health:
  healthProbeBindAddress: 127.0.0.1:${HEALTH_PORT}
metrics:
  bindAddress: 127.0.0.1:${METRICS_PORT}
webhook:
  host: 127.0.0.1
  port: ${WEBHOOK_PORT}
  certDir: ${STATE_DIR}/certs
leaderElection:
  leaderElect: false
# the serving certificate is ours (signed by the control plane's CA); no Secret, no Service to patch
internalCertManagement:
  enable: false
# only jobs that name a LocalQueue are queued; managedJobsNamespaceSelector is left at Kueue's default (all but
# kube-system and kueue-system): it scopes Kueue's own integrations, and the operator's Workloads need none
manageJobsWithoutQueueName: false
integrations:
  # The operator manages its jobs' Workloads itself (docs/scheduling.md): no built-in integration is needed.
  # An empty list means batch/job to Kueue, so it is named; its webhook is not registered (write_webhooks), so
  # no Job is ever gated here. LLMTrainingJob is an external framework (Workloads owned by it are its jobs').
  frameworks: [batch/job]
  externalFrameworks:
  - LLMTrainingJob.v1alpha1.llmtraining.dev
# MultiKueue, in a manager cluster: the generic adapter for external frameworks (gate MultiKueueAdaptersForCustomJobs,
# beta and on) copies an LLMTrainingJob with spec.managedBy to the worker cluster that admits its Workload, and the
# worker's status back. Inert without a MultiKueueCluster (tests/e2e/test_multikueue_clusters.py makes one).
multiKueue:
  externalFrameworks:
  - name: LLMTrainingJob.v1alpha1.llmtraining.dev
featureGates:
  VisibilityOnDemand: false  # an aggregated API server of its own: not needed here
EOC
}

# Kueue's own webhook manifests (config/components/webhook/manifests.yaml), reduced to its own kinds (the job
# integrations' webhooks are left out: they are not served) and pointed at the manager on loopback.
write_webhooks() {
  local mod src="${BUILD_DIR}/src"
  mod="$(go_module_dir "$GO_CACHE_ROOT" "$src" sigs.k8s.io/kueue)"
  "${PYTHON:-python3}" - "$mod/config/components/webhook/manifests.yaml" "https://127.0.0.1:${WEBHOOK_PORT}" "$PKI/ca.crt" \
    "$WEBHOOK_CONFIG_PREFIX" >"${STATE_DIR}/webhooks.yaml" <<'EOP'
import base64, json, sys, yaml
source, base_url, ca_file, prefix = sys.argv[1:]
ca = base64.b64encode(open(ca_file, "rb").read()).decode()
out = []
for doc in yaml.safe_load_all(open(source)):
    if not doc:
        continue
    doc["metadata"] = {"name": f"{prefix}-{doc['kind'].replace('WebhookConfiguration', '').lower()}"}
    hooks = []
    for hook in doc["webhooks"]:
        path = hook["clientConfig"]["service"]["path"]
        if "-kueue-x-k8s-io-" not in path:
            continue
        hook["clientConfig"] = {"url": base_url + path, "caBundle": ca}
        hooks.append(hook)
    doc["webhooks"] = hooks
    out.append(doc)
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": out}))
EOP
}

# With its internal cert management off, Kueue v0.17 reads its metrics server's certificate from a fixed path
# (cmd/kueue/main.go: /etc/kueue/metrics/certs). Nothing scrapes it here; any certificate will do.
METRICS_CERT_DIR="/etc/kueue/metrics/certs"
ensure_metrics_cert() {
  [[ -s "$METRICS_CERT_DIR/tls.crt" && -s "$METRICS_CERT_DIR/tls.key" ]] && return
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  local tmp; tmp="$(mktemp -d)"
  gen_cert "$tmp"
  $sudo mkdir -p "$METRICS_CERT_DIR" && $sudo cp "$tmp/tls.crt" "$tmp/tls.key" "$METRICS_CERT_DIR/" \
    || die "cannot write Kueue's metrics certificate to ${METRICS_CERT_DIR} (needs root)"
  $sudo chmod 644 "$METRICS_CERT_DIR/tls.key"  # a throwaway key for a loopback test server, read by the manager
  rm -rf "$tmp"
}

cmd_up() {
  [[ -f "${CP_STATE_DIR}/ports.env" ]] || die "no control plane in ${CP_STATE_DIR} (hack/controlplane.sh up)"
  if ready; then log "kueue already up (state: ${STATE_DIR})"; return; fi
  cmd_down_quiet
  cmd_build
  local t0=$SECONDS
  mkdir -p "${STATE_DIR}/logs"
  cat >"${STATE_DIR}/ports.env" <<EOP
HEALTH_PORT=$(free_port)
METRICS_PORT=$(free_port)
WEBHOOK_PORT=$(free_port)
EOP
  # shellcheck disable=SC1091
  source "${STATE_DIR}/ports.env"
  trap 'rc=$?; if ((rc != 0)); then log "up failed; log: ${LOG}"; tail -n 30 "$LOG" >&2 || true; stop_manager; fi' EXIT
  kc apply --server-side --force-conflicts -f "$BIN_DIR/crds" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$BIN_DIR/crds" >/dev/null
  kc create namespace "$NAMESPACE" --dry-run=client -o yaml | kc apply -f - >/dev/null
  gen_cert "${STATE_DIR}/certs"
  ensure_metrics_cert
  write_config
  write_webhooks
  log "starting kueue manager"
  KUBECONFIG="$KUBECONFIG_PATH" spawn "$PID_FILE" "$LOG" "$BIN_DIR/kueue" --config="${STATE_DIR}/config.yaml" --zap-log-level=2
  local deadline=$((SECONDS + 120))
  until ready; do
    alive_pid >/dev/null || die "kueue exited (log: ${LOG})"
    ((SECONDS < deadline)) || die "timed out waiting for kueue /readyz"
    sleep 0.5
  done
  kc apply -f "${STATE_DIR}/webhooks.yaml" >/dev/null
  deadline=$((SECONDS + 60))
  until webhook_serves; do
    ((SECONDS < deadline)) || die "timed out waiting for kueue's webhooks through the API server"
    sleep 0.5
  done
  trap - EXIT
  log "kueue up in $((SECONDS - t0))s: webhooks https://127.0.0.1:${WEBHOOK_PORT}, log ${LOG}"
}

stop_manager() {
  local pid
  pid="$(alive_pid)" || return 0
  log "stopping kueue (pid ${pid})"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# stop the manager and unregister its webhooks (a webhook nobody serves would reject every Kueue object)
cmd_down_quiet() {
  stop_manager
  if [[ -f "${CP_STATE_DIR}/ports.env" ]] && [[ -s "$KUBECONFIG_PATH" ]]; then
    kc delete mutatingwebhookconfiguration "${WEBHOOK_CONFIG_PREFIX}-mutating" --ignore-not-found >/dev/null 2>&1 || true
    kc delete validatingwebhookconfiguration "${WEBHOOK_CONFIG_PREFIX}-validating" --ignore-not-found >/dev/null 2>&1 || true
  fi
  [[ -d "$STATE_DIR" ]] && rm -rf "$STATE_DIR"
  return 0
}

cmd_down() { cmd_down_quiet; log "down"; }

cmd_status() {
  if ready; then echo "kueue running (pid $(alive_pid)), ready"; else echo "kueue not ready"; return 1; fi
}

main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    build) cmd_build "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    bin-dir) echo "$BIN_DIR" ;;
    *) echo "usage: $0 build|up|down|status|bin-dir" >&2; exit 2 ;;
  esac
}
main "$@"; exit $?
