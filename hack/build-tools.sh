#!/usr/bin/env bash
# Build the real control-plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet, etcd, kwok, kwokctl, helm) from Go modules.
#
# Why a script: there is no Docker and no release-binary download here, only the Go
# module proxy. k8s.io/kubernetes replaces its staging modules with ./staging paths,
# so we generate a throwaway module whose replace list is derived from upstream's
# own go.mod at build time. Outputs are cached keyed on versions: a warm run is a no-op.
# Usage: hack/build-tools.sh [kwok|helm|etcd|kubernetes|kubelet ...]   (no argument: all of them)
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"

TOOLS_DIR="${KUBEFORGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge/tools}"
BIN="$TOOLS_DIR/bin"
STAMP_DIR="$TOOLS_DIR/stamps"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOMODCACHE="${GOMODCACHE:-$TOOLS_DIR/gomodcache}"
export GOCACHE="${GOCACHE:-$TOOLS_DIR/gocache}"
mkdir -p "$BIN" "$STAMP_DIR"

log() { printf '[build-tools] %s\n' "$*" >&2; }

stamp_ok() { [[ -f "$STAMP_DIR/$1" && "$(cat "$STAMP_DIR/$1")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" >"$STAMP_DIR/$1"; }

k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  printf '%s' "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
}

build_kubernetes() {
  local key="kubernetes-$K8S_VERSION"
  if stamp_ok kubernetes "$key" && [[ -x "$BIN/kube-apiserver" && -x "$BIN/kubectl" ]]; then
    log "kubernetes $K8S_VERSION: cached"; return
  fi
  local mod="$TOOLS_DIR/src/kubernetes-$K8S_VERSION" staging_ver="v0.${K8S_VERSION#v1.}"
  rm -rf "$mod"; mkdir -p "$mod"; cd "$mod"
  go mod init kubeforge.local/k8s-build >/dev/null 2>&1
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
  local upstream
  upstream="$(go list -m -f '{{.GoMod}}' "k8s.io/kubernetes@$K8S_VERSION")"
  # Every ./staging replace upstream → a versioned replace here.
  go mod edit -json "$upstream" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        print(r["Old"]["Path"])
' | while read -r path; do
    go mod edit -replace "$path=$path@$staging_ver"
  done
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
  log "resolving kubernetes $K8S_VERSION module graph"
  go mod tidy -e >/dev/null 2>&1 || true
  local ldflags; ldflags="$(k8s_ldflags)"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (slow when cold)"
  go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl
  stamp_set kubernetes "$key"
}

# The real node's kubelet, from the same module graph as the control plane (one more package to link).
build_kubelet() {
  local key="kubelet-$K8S_VERSION"
  if stamp_ok kubelet "$key" && [[ -x "$BIN/kubelet" ]]; then log "kubelet $K8S_VERSION: cached"; return; fi
  local mod="$TOOLS_DIR/src/kubernetes-$K8S_VERSION"
  [[ -f "$mod/go.mod" ]] || { rm -f "$STAMP_DIR/kubernetes"; build_kubernetes; }
  cd "$mod"
  grep -q 'cmd/kubelet' tools.go || sed -i 's#^import (#import (\n\t_ "k8s.io/kubernetes/cmd/kubelet"#' tools.go
  log "building kubelet $K8S_VERSION"
  go build -trimpath -ldflags "$(k8s_ldflags)" -o "$BIN/" k8s.io/kubernetes/cmd/kubelet
  stamp_set kubelet "$key"
}

build_etcd() {
  local key="etcd-$ETCD_VERSION"
  if stamp_ok etcd "$key" && [[ -x "$BIN/etcd" ]]; then log "etcd $ETCD_VERSION: cached"; return; fi
  local mod="$TOOLS_DIR/src/etcd-$ETCD_VERSION"
  rm -rf "$mod"; mkdir -p "$mod"; cd "$mod"
  go mod init kubeforge.local/etcd-build >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
  log "building etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  stamp_set etcd "$key"
}

# helm's own version (else `helm version` says "v3.22") and the Kubernetes version that `helm template` and
# `helm lint` assume without a cluster or --kube-version: helm's Makefile sets both, `go install` alone
# leaves v1.20, which fails any chart with a kubeVersion constraint (ours: >=1.30). Ours: K8S_VERSION's.
helm_ldflags() {
  local minor="${K8S_VERSION#v1.}" v=helm.sh/helm/v3; minor="${minor%%.*}"
  printf '%s' "-s -w -X $v/internal/version.version=$HELM_VERSION -X $v/internal/version.gitTreeState=clean \
-X $v/pkg/chartutil.k8sVersionMajor=1 -X $v/pkg/chartutil.k8sVersionMinor=$minor \
-X $v/pkg/lint/rules.k8sVersionMajor=1 -X $v/pkg/lint/rules.k8sVersionMinor=$minor"
}

build_plain() {  # name module-path version ldflags binaries...
  local name="$1" module="$2" version="$3" ldflags="$4"; shift 4
  # Keyed on the version and, beyond the default "-s -w", the ldflags: changing either rebuilds.
  local key="$name-$version"
  [[ "$ldflags" == "-s -w" ]] || key="$key-$(printf '%s' "$ldflags" | sha256sum | cut -c1-12)"
  if stamp_ok "$name" "$key" && [[ -x "$BIN/$name" ]]; then log "$name $version: cached"; return; fi
  log "building $name $version"
  for pkg in "$@"; do GOBIN="$BIN" go install -trimpath -ldflags "$ldflags" "$module/$pkg@$version"; done
  stamp_set "$name" "$key"
}

build_kwok() { build_plain kwok sigs.k8s.io/kwok "$KWOK_VERSION" "-s -w" cmd/kwok cmd/kwokctl; }
build_helm() { build_plain helm helm.sh/helm/v3 "$HELM_VERSION" "$(helm_ldflags)" cmd/helm; }

main() {  # [tool...]: build only those (e.g. `hack/build-tools.sh helm`); none: every tool
  local start=$SECONDS tool tools=("$@")
  ((${#tools[@]})) || tools=(kwok helm etcd kubernetes kubelet)
  # One build at a time: test sessions starting together must not both write the same binaries.
  exec 8>"$TOOLS_DIR/.build.lock"
  flock 8
  for tool in "${tools[@]}"; do
    case "$tool" in
      kwok|helm|etcd|kubernetes|kubelet) "build_$tool" ;;
      *) log "unknown tool $tool (kwok helm etcd kubernetes kubelet)"; exit 2 ;;
    esac
  done
  log "done in $((SECONDS - start))s; binaries in $BIN"
  echo "$BIN"
}

main "$@"
