# Sourced by the scripts that build from Go modules (controlplane.sh, kueue.sh, realnode.sh): one shared module and
# build cache (the control plane's), static binaries, module mode whatever the caller's environment says.
# go_env CACHE_ROOT : CACHE_ROOT holds gomodcache/ and gocache/
go_env() {
  export GOMODCACHE="$1/gomodcache" GOCACHE="$1/gocache"
  export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 GOWORK=off
  unset GOOS GOARCH || true
}

# go_module_dir CACHE_ROOT DIR MODULE : where the module cache holds MODULE, a dependency of the go.mod in DIR
# (the files a module ships beside its code: CRDs, stages, webhook manifests). Leaves the caller's environment as it was.
go_module_dir() {
  (go_env "$1" && cd "$2" && "$GO" list -m -f '{{.Dir}}' "$3")
}
