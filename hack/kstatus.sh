#!/usr/bin/env bash
# Builds kstatus (hack/tools/kstatus): the health Flux and kapply read, from sigs.k8s.io/cli-utils itself.
# Cached by version under ${LLMTO_CACHE:-~/.cache/llm-training-operator}/kstatus; the module cache is the control plane's.
#   hack/kstatus.sh build   build (or find cached); prints nothing else
#   hack/kstatus.sh bin     print the binary's path
set -euo pipefail
# shellcheck source=lib/go-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-tool.sh"

CLI_UTILS_VERSION="v0.37.2"  # sigs.k8s.io/cli-utils (kstatus)
go_tool kstatus sigs.k8s.io/cli-utils "$CLI_UTILS_VERSION" 1.24 "${1:-}" || { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
