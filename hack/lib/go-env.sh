# Sourced by the scripts that build from Go modules (controlplane.sh, kueue.sh, realnode.sh): one shared module and
# build cache (the control plane's), static binaries, module mode whatever the caller's environment says.
# go_env CACHE_ROOT : CACHE_ROOT holds gomodcache/ and gocache/
go_env() {
  export GOMODCACHE="$1/gomodcache" GOCACHE="$1/gocache"
  export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 GOWORK=off
  unset GOOS GOARCH || true
}
