#!/usr/bin/env bash
# Builds lua-health (hack/tools/lua-health): Argo CD health checks run with gopher-lua, the Lua Argo CD embeds.
# Cached by version under ${LLMTO_CACHE:-~/.cache/llm-training-operator}/lua-health; the module cache is the control plane's.
#   hack/lua-health.sh build   build (or find cached); prints nothing else
#   hack/lua-health.sh bin     print the binary's path
set -euo pipefail

GOPHER_LUA_VERSION="v1.1.1"  # github.com/yuin/gopher-lua
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
CACHE="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}"
GO_CACHE_ROOT="${CACHE}/controlplane"
SRC="$ROOT/hack/tools/lua-health/main.go"
HASH="$(printf '%s\n' "$GOPHER_LUA_VERSION" "$(sha256sum "$SRC" | cut -c1-16)" "$("$GO" env GOVERSION 2>/dev/null || echo go?)" | sha256sum | cut -c1-12)"
BIN="${CACHE}/lua-health/${HASH}/bin/lua-health"

# shellcheck source=lib/go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-env.sh"

cmd_build() {
  [[ -x "$BIN" ]] && return
  local src="${CACHE}/lua-health/${HASH}/src"
  mkdir -p "$src" "$(dirname "$BIN")"
  cp "$SRC" "$src/main.go"
  printf 'module llmto.local/lua-health\n\ngo 1.22\n\nrequire github.com/yuin/gopher-lua %s\n' "$GOPHER_LUA_VERSION" >"$src/go.mod"
  go_env "$GO_CACHE_ROOT"
  (cd "$src" && "$GO" build -trimpath -ldflags=-s -o "$BIN.tmp" . && mv "$BIN.tmp" "$BIN")
}

case "${1:-}" in
  build) cmd_build ;;
  bin) echo "$BIN" ;;
  *) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
