#!/usr/bin/env bash
# The project's images built from its Dockerfile with buildah (no Docker engine, no registry), for the
# real node of hack/realnode.sh.
#
#   hack/images.sh build [TARGET...]   # default: operator trainer-cpu; prints one "TARGET REF TAR" line each
#   hack/images.sh import TARGET...    # build (cached), import into the real node's containerd, tag :dev too
#   hack/images.sh base                # only the Debian base image
#   hack/images.sh deps [deps|deps-cpu]  # only the dependency-only image (default deps-cpu); prints its ref
#
# Base image: by default the Dockerfile's own bases (python:slim, the CUDA devel image) are replaced by a
# Debian rootfs made here with debootstrap (nothing can be pulled from a registry on this machine):
# LLMTO_IMAGE_BASE=dockerfile keeps the Dockerfile's defaults (needs a registry).
# Two caches, so that a source change does not rebuild torch and DeepSpeed:
# - the dependency-only stages (deps, deps-cpu: torch, DeepSpeed, transformers, not our package), named by a hash
#   of their own Dockerfile lines, the output of hack/deps-requirements.py and the base; kept in buildah's storage
#   (and as a tar beside the others, reloaded when the storage was wiped);
# - every target, as a docker-archive tar named by a hash of its inputs: the Dockerfile, and pyproject.toml,
#   README.md, operator/, trainer/, hack/operator-requirements.py (examples/programs/ for examples-cpu), the
#   base or deps image, the target. trainer, trainer-cpu and examples-cpu are built on their cached deps image
#   (--build-context), so they take seconds; a warm run only imports the tar.
# All in ${LLMTO_CACHE:-~/.cache/llm-training-operator}/images. Refs: localhost/llmto/<target>:<hash>.
set -euo pipefail

DEBIAN_SUITE="bookworm"
DEBIAN_MIRROR="${LLMTO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES="python3,python3-venv,ca-certificates"
BASE_REV="1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}/images"
BASE_MODE="${LLMTO_IMAGE_BASE:-debian}"

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_image() { buildah images --quiet "$1" >/dev/null 2>&1; }

# The Debian base: debootstrap minbase + python3 and a venv on PATH (pip works like in python:slim).
base_ref() {
  local h; h="$(printf '%s\n' "$DEBIAN_SUITE" "$BASE_PACKAGES" "$BASE_REV" | sha256sum | cut -c1-12)"
  echo "localhost/llmto/debian-base:${h}"
}

build_base() {
  local ref tar t0=$SECONDS; ref="$(base_ref)"; tar="$CACHE/debian-base-${ref##*:}.tar"
  if have_image "$ref"; then log "base ${ref}: cached"; echo "$ref"; return; fi
  mkdir -p "$CACHE"
  if [[ -s "$tar" ]]; then
    buildah pull --quiet "docker-archive:$tar" >/dev/null; log "base ${ref}: loaded from ${tar}"; echo "$ref"; return
  fi
  log "building base ${ref}: debootstrap ${DEBIAN_SUITE} (cold: ~2-3 min) ..."
  # globals, so the EXIT trap of a failed build still sees them
  BASE_ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/llmto-rootfs.XXXXXX")"; BASE_CTR=""
  trap 'rm -rf "$BASE_ROOTFS"; [[ -z "$BASE_CTR" ]] || buildah rm "$BASE_CTR" >/dev/null 2>&1 || true' EXIT
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$BASE_ROOTFS" "$DEBIAN_MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  chroot "$BASE_ROOTFS" python3 -m venv /opt/python
  chroot "$BASE_ROOTFS" apt-get clean
  rm -rf "$BASE_ROOTFS"/var/lib/apt/lists/* "$BASE_ROOTFS"/var/cache/apt/*.bin
  BASE_CTR="$(buildah from scratch)"
  local mnt; mnt="$(buildah mount "$BASE_CTR")"
  tar -C "$BASE_ROOTFS" -c . | tar -C "$mnt" -x
  buildah umount "$BASE_CTR" >/dev/null
  buildah config --env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash --os linux --arch amd64 "$BASE_CTR"
  buildah commit --quiet --rm "$BASE_CTR" "$ref" >/dev/null; BASE_CTR=""
  buildah push --quiet "$ref" "docker-archive:$tar:$ref" >/dev/null
  rm -rf "$BASE_ROOTFS"; trap - EXIT
  log "base ${ref} built in $((SECONDS - t0))s"
  echo "$ref"
}

# the stage a target is built on, from its own cached image (empty: built from the base alone)
deps_stage() {
  case "$1" in
    trainer) echo deps ;;
    trainer-cpu|examples-cpu) echo deps-cpu ;;
    *) echo "" ;;
  esac
}

# the Dockerfile's global lines (before the first FROM) and the lines of the named stages, without comments
dockerfile_stages() {
  awk -v want=" $* " '
    /^[[:space:]]*(#|$)/ { next }
    toupper($1) == "FROM" { started = 1; stage = ""
      for (i = 2; i < NF; i++) if (toupper($i) == "AS") stage = $(i + 1)
      inside = index(want, " " stage " ") > 0 }
    !started || inside { print }' "$ROOT/Dockerfile"
}

# content hash of the dependency spec of a deps stage: its Dockerfile lines, its requirements, the base
deps_hash() {
  local stage="$1" base="$2" stages=(deps-requirements deps)
  [[ "$stage" == deps ]] || stages+=("$stage")
  { echo "$stage $base"; dockerfile_stages "${stages[@]}"; python3 "$ROOT/hack/deps-requirements.py" "$ROOT/pyproject.toml"; } \
    | sha256sum | cut -c1-12
}

# content hash of everything a target's build reads: the Dockerfile, what it COPYs, the base and the target
source_hash() {
  local target="$1" base="$2" inputs=(Dockerfile pyproject.toml README.md hack/operator-requirements.py operator trainer)
  [[ "$target" != examples-cpu ]] || inputs=(Dockerfile examples/programs)
  {
    echo "$target $base"
    (cd "$ROOT" && find "${inputs[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-12
}

# this machine's CA bundle and pip config (a TLS-inspecting network needs its CA in pip and apt too)
host_volumes() {
  local f; for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [[ -f "$f" ]] && printf -- '--volume\n%s:%s:ro\n' "$f" "$f"
  done
  return 0
}

# bud flags, and why: no --layers: buildah 1.28 (Debian 12) cannot bind-mount a stage (RUN --mount=...,from=wheel)
# that it took from its layer cache ("couldn't find .../merged/wheels"), so every build is whole and the
# caches here are ours; docker format: the OCI image config has no SHELL (the Dockerfile's pipefail would be dropped)
bud() {
  local volumes; mapfile -t volumes < <(host_volumes)
  buildah bud --quiet --layers=false --format docker --network host "${volumes[@]}" -f "$ROOT/Dockerfile" "$@" "$ROOT" >&2
}

# the Debian base's ref (built if missing), empty with LLMTO_IMAGE_BASE=dockerfile
debian_base() {
  if [[ "$BASE_MODE" == debian ]]; then build_base; fi
}

# the build arguments that put BASE (a ref, or empty: the Dockerfile's defaults) under every stage
base_args() {
  local base="$1" args=()
  [[ -z "$base" ]] || args=(--build-arg "PYTHON_IMAGE=$base" --build-arg "CUDA_IMAGE=$base")
  BASE_ARGS=("${args[@]}")
}

# the dependency-only image of STAGE (deps or deps-cpu), in buildah's storage -> prints its ref
build_deps() {
  local stage="$1" base h ref tar t0=$SECONDS
  base="$(debian_base)"
  h="$(deps_hash "$stage" "$base")"; ref="localhost/llmto/${stage}:${h}"; tar="$CACHE/${stage}-${h}.tar"
  if have_image "$ref"; then log "${stage} ${ref}: cached"; echo "$ref"; return; fi
  mkdir -p "$CACHE"
  if [[ -s "$tar" ]]; then
    buildah pull --quiet "docker-archive:$tar" >/dev/null
    log "${stage} ${ref}: loaded from ${tar} in $((SECONDS - t0))s"; echo "$ref"; return
  fi
  log "building ${stage} from the Dockerfile (${ref}; torch, DeepSpeed: cold ~5-10 min) ..."
  base_args "$base"
  bud --target "$stage" "${BASE_ARGS[@]}" -t "$ref"
  rm -f "$CACHE/${stage}-"*.tar   # one cached tar per stage
  buildah push --quiet "$ref" "docker-archive:$tar.partial:$ref" >/dev/null
  mv "$tar.partial" "$tar"
  log "${stage} built in $((SECONDS - t0))s ($(du -h "$tar" | cut -f1))"
  echo "$ref"
}

# build TARGET -> prints "TARGET REF TAR"
build_target() {
  local target="$1" deps base h ref tar t0=$SECONDS
  deps="$(deps_stage "$target")"
  base="$(debian_base)"
  base_args "$base"
  local args=("${BASE_ARGS[@]}")
  if [[ -n "$deps" ]]; then
    base="$(build_deps "$deps")"
    args+=(--build-context "${deps}=container-image://${base}")   # the stage from its cached image, not rebuilt
  fi
  h="$(source_hash "$target" "$base")"; ref="localhost/llmto/${target}:${h}"; tar="$CACHE/${target}-${h}.tar"
  if [[ -s "$tar" ]]; then log "${target}: cached (${tar})"; echo "$target $ref $tar"; return; fi
  mkdir -p "$CACHE"
  log "building ${target} from the Dockerfile (${ref}${deps:+ on ${base}}) ..."
  bud --target "$target" "${args[@]}" -t "$ref"
  rm -f "$CACHE/${target}-"*.tar   # one cached tar per target
  buildah push --quiet "$ref" "docker-archive:$tar.partial:$ref" >/dev/null
  mv "$tar.partial" "$tar"
  buildah rmi "$ref" >/dev/null 2>&1 || true   # the tar is the cache; buildah's copy would only take disk
  log "${target} built in $((SECONDS - t0))s ($(du -h "$tar" | cut -f1))"
  echo "$target $ref $tar"
}

cmd_build() {
  local targets=("$@"); ((${#targets[@]})) || targets=(operator trainer-cpu)
  command -v buildah >/dev/null || die "buildah missing: hack/realnode.sh deps"
  local t; for t in "${targets[@]}"; do build_target "$t"; done
}

# import TARGET... into the real node's containerd (hack/realnode.sh up must have run)
cmd_import() {
  local line target ref tar ctr sock
  ctr="$(bash "$ROOT/hack/realnode.sh" bin-dir)/ctr"
  sock="${LLMTO_CP_DIR:-/tmp/llmto-controlplane}/realnode/containerd.sock"
  [[ -S "$sock" ]] || die "no real node containerd at ${sock}"
  while read -r target ref tar; do
    if "$ctr" --address "$sock" -n k8s.io images ls -q | grep -qx "$ref"; then
      log "${ref}: already in containerd"
    else
      local t0=$SECONDS
      "$ctr" --address "$sock" -n k8s.io images import "$tar" >/dev/null
      log "imported ${ref} in $((SECONDS - t0))s"
    fi
    # a stable name for examples/ and ./dev cluster: localhost/llmto/<target>:dev
    "$ctr" --address "$sock" -n k8s.io images tag --force "$ref" "${ref%:*}:dev" >/dev/null
    echo "$target $ref"
  done < <(cmd_build "$@")
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  import) shift; cmd_import "$@" ;;
  base) build_base ;;
  deps) command -v buildah >/dev/null || die "buildah missing: hack/realnode.sh deps"; build_deps "${2:-deps-cpu}" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
