#!/usr/bin/env bash
# Build hack/argocd-lua (Argo CD's Lua sandbox for health scripts) and print the binary's path.
#
# The binary is cached under the tools dir, keyed on a hash of main.go, go.mod and go.sum, so a warm
# run only hashes three files. Needs Go (GOTOOLCHAIN=local) and, when cold, the Go module proxy.
# tests/unit/test_argocd_health.py calls this; by hand:
#   echo '[{"file": "argocd/health.lua", "obj": {...}}]' | "$(hack/argocd-lua/build.sh)"
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS_DIR="${KUBEFORGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge/tools}"
hash="$(cat "$SRC/main.go" "$SRC/go.mod" "$SRC/go.sum" | sha256sum | cut -c1-16)"
out="$TOOLS_DIR/bin/argocd-lua-$hash"
if [[ ! -x "$out" ]]; then
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
  export GOMODCACHE="${GOMODCACHE:-$TOOLS_DIR/gomodcache}" GOCACHE="${GOCACHE:-$TOOLS_DIR/gocache}"
  mkdir -p "$TOOLS_DIR/bin"
  tmp="$(mktemp "$TOOLS_DIR/bin/.argocd-lua.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  (cd "$SRC" && go build -trimpath -o "$tmp" .) >&2
  mv -f "$tmp" "$out"  # atomic: a concurrent run sees either nothing or the whole binary
  find "$TOOLS_DIR/bin" -maxdepth 1 -name 'argocd-lua-*' ! -name "argocd-lua-$hash" -delete
fi
printf '%s\n' "$out"
