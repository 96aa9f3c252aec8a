# A small Go program of ours (hack/tools/NAME/main.go) built against one pinned module, cached under
# ${LLMTO_CACHE:-~/.cache/llm-training-operator}/NAME/<hash of the version, the source and Go>; the module cache is the
# control plane's. Sourced by hack/kstatus.sh and hack/lua-health.sh:
#   go_tool NAME MODULE VERSION GO_DIRECTIVE build|bin
# shellcheck source=go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"

go_tool() {
  local name="$1" module="$2" version="$3" go_directive="$4" cmd="${5:-}"
  local root go cache src hash bin
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
  cache="${LLMTO_CACHE:-$HOME/.cache/llm-training-operator}"
  src="$root/hack/tools/$name/main.go"
  hash="$(printf '%s\n' "$version" "$(sha256sum "$src" | cut -c1-16)" "$("$go" env GOVERSION 2>/dev/null || echo go?)" | sha256sum | cut -c1-12)"
  bin="${cache}/${name}/${hash}/bin/${name}"
  case "$cmd" in
    bin) echo "$bin" ;;
    build)
      [[ -x "$bin" ]] && return
      local work="${cache}/${name}/${hash}/src"
      mkdir -p "$work" "$(dirname "$bin")"
      cp "$src" "$work/main.go"
      printf 'module llmto.local/%s\n\ngo %s\n\nrequire %s %s\n' "$name" "$go_directive" "$module" "$version" >"$work/go.mod"
      go_env "${cache}/controlplane"
      (cd "$work" && "$go" build -trimpath -ldflags=-s -o "$bin.tmp" . && mv "$bin.tmp" "$bin") ;;
    *) return 2 ;;
  esac
}
