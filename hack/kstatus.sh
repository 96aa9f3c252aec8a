#!/usr/bin/env bash
# Builds kstatus (hack/tools/kstatus): the health Flux and kapply read, from sigs.k8s.io/cli-utils itself.
# Cached by version under ${LLMTO_CACHE:-~/.cache/llm-training-operator}/kstatus; the module cache is the control plane's.
#   hack/kstatus.sh build   build (or find cached); prints nothing else
#   hack/kstatus.sh bin     print the binary's path
set -euo pipefail

CLI_UTILS_VERSION="v0.37.2"  # sigs.k8s.io/cli-utils (kstatus)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
CACHE="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}"
GO_CACHE_ROOT="${CACHE}/controlplane"
SRC="$ROOT/hack/tools/kstatus/main.go"
HASH="$(printf '%s\n' "$CLI_UTILS_VERSION" "$(sha256sum "$SRC" | cut -c1-16)" "$("$GO" env GOVERSION 2>/dev/null || echo go?)" | sha256sum | cut -c1-12)"
BIN="${CACHE}/kstatus/${HASH}/bin/kstatus"

# shellcheck source=lib/go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-env.sh"

cmd_build() {
  [[ -x "$BIN" ]] && return
  local src="${CACHE}/kstatus/${HASH}/src"
  mkdir -p "$src" "$(dirname "$BIN")"
  cp "$SRC" "$src/main.go"
  printf 'module llmto.local/kstatus\n\ngo 1.24\n\nrequire sigs.k8s.io/cli-utils %s\n' "$CLI_UTILS_VERSION" >"$src/go.mod"
  go_env "$GO_CACHE_ROOT"
  (cd "$src" && "$GO" build -trimpath -ldflags=-s -o "$BIN.tmp" . && mv "$BIN.tmp" "$BIN")
}

case "${1:-}" in
  build) cmd_build ;;
  bin) echo "$BIN" ;;
  *) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
