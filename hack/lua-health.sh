#!/usr/bin/env bash
# Builds lua-health (hack/tools/lua-health): Argo CD health checks run with gopher-lua, the Lua Argo CD embeds.
# Cached by version under ${LLMTO_CACHE:-~/.cache/llm-training-operator}/lua-health; the module cache is the control plane's.
#   hack/lua-health.sh build   build (or find cached); prints nothing else
#   hack/lua-health.sh bin     print the binary's path
set -euo pipefail
# shellcheck source=lib/go-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-tool.sh"

GOPHER_LUA_VERSION="v1.1.1"  # github.com/yuin/gopher-lua
go_tool lua-health github.com/yuin/gopher-lua "$GOPHER_LUA_VERSION" 1.22 "${1:-}" || { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
