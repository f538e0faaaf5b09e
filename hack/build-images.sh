#!/usr/bin/env bash
# Build Kubeforge's images without a Docker daemon: podman (with runc) from a Debian bookworm base made by
# mmdebstrap from the machine's own apt sources. No container registry is needed or contacted.
#
# Usage: hack/build-images.sh [build|env|save-missing CTR_ADDRESS]
#   build (default)  build what is missing and write the image references to $CACHE/images.env
#   env              print images.env (after a build)
#
# Images (tags are content keys: the Dockerfile, build args, base image and the files each image copies):
#   localhost/kubeforge/base       Debian bookworm minbase + python3.11, python3-venv, libpython3.11, tini
#   localhost/kubeforge/pause      the node's sandbox image (base + `sleep infinity`)
#   localhost/kubeforge/operator   operator/Dockerfile (base install only, no torch)
#   localhost/kubeforge/trainer    trainer-image/Dockerfile, EXTRAS=train
#   localhost/kubeforge/serving    serving/Dockerfile, EXTRAS=convert, layered on the trainer image so the
#                                  torch layer is stored and loaded once
#   localhost/kubeforge/triton     serving/triton/Dockerfile.cpu: the nvidia-pytriton wheel's tritonserver
#
# Everything (podman storage, base rootfs, pip cache mounted into builds) lives under
# ~/.cache/kubeforge/images, so a warm run only hashes files. Production builds use the same Dockerfiles with
# their default BASE_IMAGE (see README.md, "Images").
set -euo pipefail

# KUBEFORGE_IMAGE_SOURCE: build from another checkout (e.g. a `git worktree` of HEAD while the tree changes).
ROOT="${KUBEFORGE_IMAGE_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CACHE="${KUBEFORGE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge/images}"
PIP_CACHE_DIR="${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pip}"
SUITE="${KUBEFORGE_BASE_SUITE:-bookworm}"
BASE_PACKAGES="python3,python3-venv,libpython3.11,ca-certificates,tini"
PYTRITON_VERSION="$(sed -n 's/^PYTRITON_VERSION = "\(.*\)"/\1/p' "$ROOT/serving/kubeforge_serving/triton.py")"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ensure_packages() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (Debian packages)"
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
      || { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
      || die "could not install ${missing[*]}"
  fi
}

# podman configuration of our own: runc (crun refuses hybrid cgroups), explicit ulimits (the sandbox has no
# CAP_SYS_RESOURCE, so inherited limits above the hard limit fail in setrlimit), storage in the cache.
configure_podman() {
  mkdir -p "$CACHE/storage" "$CACHE/run" "$CACHE/tmp"
  cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
  cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF
  export CONTAINERS_CONF="$CACHE/containers.conf" CONTAINERS_STORAGE_CONF="$CACHE/storage.conf" TMPDIR="$CACHE/tmp"
}

sha() { sha256sum | cut -c1-16; }

# Content key of files and directories (relative to ROOT), ignoring caches.
tree_key() {
  (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z \
    | xargs -0 sha256sum) | sha
}

image_exists() { podman image exists "$1"; }

build_base() {
  local sources key tag tar
  sources=""
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [[ -s "$f" ]] && { sources="$f"; break; }
  done
  [[ -n "$sources" ]] || die "no apt sources file found for mmdebstrap"
  key="$(printf '%s|%s|%s' "$SUITE" "$BASE_PACKAGES" "$(grep -v '^#' "$sources")" | sha)"
  tag="localhost/kubeforge/base:$key"
  if ! image_exists "$tag"; then
    tar="$CACHE/base-$key.tar"
    if [[ ! -s "$tar" ]]; then
      log "base: mmdebstrap $SUITE minbase + $BASE_PACKAGES (about 3 min)"
      mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tar.part" "$sources" >&2 \
        || die "mmdebstrap failed"
      mv "$tar.part" "$tar"
    fi
    podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' "$tar" "$tag" >&2
  fi
  BASE="$tag"
}

# build NAME DOCKERFILE KEY_EXTRA [--build-arg ...]: build localhost/kubeforge/NAME:<key> unless present.
build() {
  local name="$1" dockerfile="$2" extra="$3"; shift 3
  local key tag start=$SECONDS
  key="$(printf '%s|%s|%s|%s' "$(sha256sum <"$ROOT/$dockerfile")" "$*" "$(podman image inspect -f '{{.Id}}' "$BASE_FOR")" "$extra" | sha)"
  tag="localhost/kubeforge/$name:$key"
  if image_exists "$tag"; then
    log "$name: cached ($tag)"
  else
    log "$name: building $tag"
    mkdir -p "$PIP_CACHE_DIR"
    podman build --layers --network host --pull=never \
      -v "$CA_BUNDLE:$CA_BUNDLE:ro" -v "$PIP_CACHE_DIR:/root/.cache/pip" \
      --build-arg "BASE_IMAGE=$BASE_FOR" --build-arg PIP_CACHE=on "$@" \
      -f "$ROOT/$dockerfile" -t "$tag" "$ROOT" >&2 || die "$name: podman build failed"
    log "$name: built in $((SECONDS - start))s, $(podman image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec) "
  fi
  printf -v "IMG_${name^^}" '%s' "$tag"
}

# Keep only the current images: each trainer build is 6 GB, and the disk is shared.
prune_old() {
  local ref keep=" $* "
  while read -r ref; do
    [[ "$keep" == *" $ref "* ]] || podman rmi "$ref" >/dev/null 2>&1 || true
  done < <(podman images --format '{{.Repository}}:{{.Tag}}' --filter reference='localhost/kubeforge/*')
  podman image prune -f >/dev/null 2>&1 || true
}

cmd_build() {
  local start=$SECONDS code
  ensure_packages
  configure_podman
  # One build at a time: two test sessions must not both write the same storage.
  exec 7>"$CACHE/.build.lock"
  flock 7
  # A build killed midway (a timeout, Ctrl-C) leaves its working container behind, with gigabytes of
  # half-installed layers; under the lock no other build is running, so every such container is stale.
  podman ps -a --external -q 2>/dev/null | xargs -r podman rm -f >/dev/null 2>&1 || true
  build_base
  code="$(tree_key pyproject.toml README.md hack/pyproject-requirements.py operator trainer-image serving)"
  BASE_FOR="$BASE"
  build pause hack/images/pause.Dockerfile ""
  build operator operator/Dockerfile "$code"
  build triton serving/triton/Dockerfile.cpu "" --build-arg "PYTRITON_VERSION=$PYTRITON_VERSION"
  build trainer trainer-image/Dockerfile "$code" --build-arg EXTRAS=train
  BASE_FOR="$IMG_TRAINER"
  build serving serving/Dockerfile "$code" --build-arg EXTRAS=convert
  cat >"$CACHE/images.env" <<EOF
KUBEFORGE_IMAGE_BASE=$BASE
KUBEFORGE_IMAGE_PAUSE=$IMG_PAUSE
KUBEFORGE_IMAGE_OPERATOR=$IMG_OPERATOR
KUBEFORGE_IMAGE_TRAINER=$IMG_TRAINER
KUBEFORGE_IMAGE_SERVING=$IMG_SERVING
KUBEFORGE_IMAGE_TRITON=$IMG_TRITON
EOF
  prune_old "$BASE" "$IMG_PAUSE" "$IMG_OPERATOR" "$IMG_TRAINER" "$IMG_SERVING" "$IMG_TRITON"
  log "done in $((SECONDS - start))s; references in $CACHE/images.env"
  podman images --filter reference='localhost/kubeforge/*' --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2
  echo "$CACHE/images.env"
}

case "${1:-build}" in
  build) cmd_build ;;
  env) cat "$CACHE/images.env" ;;
  *) echo "usage: $0 [build|env]" >&2; exit 2 ;;
esac
