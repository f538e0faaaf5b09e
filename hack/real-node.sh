#!/usr/bin/env bash
# A real node for the test cluster: kubelet + containerd + runc + bridge CNI on this machine, registered
# beside the KWOK nodes, running the images hack/build-images.sh built. Called by hack/test-cluster.sh.
#
# Usage: hack/real-node.sh up|down|status   (KUBECONFIG_PATH, CLUSTER_DIR, BIN come from test-cluster.sh)
#
# Layout: $TOOLS_DIR/node/containerd (image store) and ~/.cache/kubeforge/registry (a local registry's
# storage) are kept between runs, so images move once; $TOOLS_DIR/node/run (kubelet root dir, containerd
# state, CNI IPAM, volumes, logs, pids, images.env with the references pods use) is removed by `down`.
#
# Why each setting (measured on a 2-core VM with hybrid cgroup v1 and no CAP_SYS_RESOURCE):
# - kubelet: failCgroupV1=false, cgroupfs driver, no QoS cgroups or node-allocatable enforcement, no local
#   storage isolation: this VM has hybrid cgroup v1 and no systemd.
# - containerd: restrict_oom_score_adj, else runc fails ("can't get final child's PID from pipe").
# - runc, not crun: crun refuses hybrid cgroups.
# - node IP: the bridge's gateway 10.244.0.1 (the kubelet rejects a loopback node IP); the bridge is made
#   before the kubelet starts so the address exists.
# - taint kubeforge.io/real-node:NoSchedule: KWOK-based tests never land here; namespaces that should run
#   here get the PodNodeSelector/PodTolerationRestriction annotations (see test-cluster.sh `real_namespace`).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS_DIR="${KUBEFORGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge/tools}"
BIN="${BIN:-$TOOLS_DIR/bin}"
NODE_NAME="${KUBEFORGE_REAL_NODE:-kubeforge-node-0}"
NODE_DIR="${KUBEFORGE_NODE_DIR:-$TOOLS_DIR/node}"
RUN_DIR="$NODE_DIR/run"
BRIDGE=kubeforge0
NODE_IP="${KUBEFORGE_NODE_IP:-10.244.0.1}"
POD_CIDR="${KUBEFORGE_POD_CIDR:-10.244.0.0/24}"
KUBELET_PORT=10350
SOCK="$RUN_DIR/containerd.sock"
REGISTRY="${KUBEFORGE_REGISTRY:-localhost:5050}"
REGISTRY_DIR="${KUBEFORGE_REGISTRY_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge/registry}"
: "${KUBECONFIG_PATH:?set by hack/test-cluster.sh}" "${CLUSTER_DIR:?set by hack/test-cluster.sh}"

log() { printf '[real-node] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }

ensure_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v curl >/dev/null || missing+=(curl)
  command -v iptables >/dev/null || missing+=(iptables)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (Debian packages)"
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
      || { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
      || die "could not install ${missing[*]}"
  fi
}

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1 || true
}

write_configs() {
  local pause="$1"
  mkdir -p "$RUN_DIR"/{net.d,kubelet,cni-ipam,logs,pids} "$NODE_DIR/containerd"
  cat >"$RUN_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd"
state = "$RUN_DIR/containerd-state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REGISTRY"]
    endpoint = ["http://$REGISTRY"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN_DIR/net.d"
EOF
  cat >"$RUN_DIR/net.d/10-kubeforge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kubeforge",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$RUN_DIR/cni-ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$RUN_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $CLUSTER_DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
address: $NODE_IP
port: $KUBELET_PORT
healthzBindAddress: 127.0.0.1
healthzPort: $((KUBELET_PORT + 1))
readOnlyPort: 0
resolvConf: /etc/resolv.conf
registerWithTaints:
- {key: kubeforge.io/real-node, value: "true", effect: NoSchedule}
# Big stage images share the disk with everything else: never evict or garbage-collect them here.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
EOF
}

running() { [[ -f "$RUN_DIR/pids/$1.pid" ]] && kill -0 "$(cat "$RUN_DIR/pids/$1.pid")" 2>/dev/null; }

start_containerd() {
  running containerd && return 0
  containerd --config "$RUN_DIR/containerd.toml" >"$RUN_DIR/logs/containerd.log" 2>&1 9>&- &
  echo $! >"$RUN_DIR/pids/containerd.pid"
  local i
  for i in $(seq 60); do ctr_ version >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "containerd did not start (see $RUN_DIR/logs/containerd.log)"
}

# Images reach the node the way they reach any cluster: pushed to a registry, pulled by containerd. The
# registry (Debian's docker-registry, i.e. CNCF distribution) serves on loopback from ~/.cache, so a code
# change pushes and pulls only the layers that changed. References for the cluster go to $RUN_DIR/images.env.
start_registry() {
  local env_file="$1"
  mkdir -p "$REGISTRY_DIR"
  if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
    prune_registry "$env_file"
    cat >"$RUN_DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $REGISTRY_DIR}, delete: {enabled: true}}
http: {addr: $REGISTRY}
EOF
    docker-registry serve "$RUN_DIR/registry.yml" >"$RUN_DIR/logs/registry.log" 2>&1 9>&- &
    echo $! >"$RUN_DIR/pids/registry.pid"
    local i
    for i in $(seq 50); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.2; done
    curl -fsS "http://$REGISTRY/v2/" >/dev/null || die "registry did not start (see $RUN_DIR/logs/registry.log)"
  fi
}

push_and_pull() {
  local env_file="$1" key ref remote start=$SECONDS cache
  cache="$(dirname "$env_file")"
  : >"$RUN_DIR/images.env"
  while IFS='=' read -r key ref; do
    [[ "$key" == KUBEFORGE_IMAGE_* && "$key" != KUBEFORGE_IMAGE_BASE ]] || continue
    remote="$REGISTRY/${ref#localhost/}"
    echo "$key=$remote" >>"$RUN_DIR/images.env"
    [[ -n "$(ctr_ images ls -q "name==$remote")" ]] && continue
    log "push + pull $remote"
    # zstd: far cheaper than gzip on two cores; containerd >= 1.5 unpacks it.
    CONTAINERS_CONF="$cache/containers.conf" CONTAINERS_STORAGE_CONF="$cache/storage.conf" TMPDIR="$cache/tmp" \
      podman push --quiet --tls-verify=false --compression-format=zstd "$ref" "docker://$remote" >&2 \
      || die "podman push $remote failed"
    ctr_ images pull --plain-http "$remote" >/dev/null || die "containerd could not pull $remote"
  done <"$env_file"
  prune_node_images
  log "images on the node ($((SECONDS - start))s); references in $RUN_DIR/images.env"
}

# Drop every other version of our images from the node, by manifest digest: the named references and the
# sha256:<image id> references the CRI plugin adds for each image it has seen (those alone kept 20 GB of old
# layers after a few dozen builds). containerd then garbage-collects their content and snapshots.
prune_node_images() {
  local current keep="" images ref digest
  current=" $(cut -d= -f2 "$RUN_DIR/images.env" | tr '\n' ' ') "
  images="$(ctr_ images ls | awk 'NR > 1 {print $1, $3}')"
  while read -r ref digest; do
    [[ "$current" == *" $ref "* ]] && keep+=" $digest"
  done <<<"$images"
  while read -r ref digest; do
    [[ "$ref" == "$REGISTRY/kubeforge/"* || "$ref" == sha256:* ]] || continue
    [[ "$keep " == *" $digest "* ]] || ctr_ images rm "$ref" >/dev/null 2>&1 || true
  done <<<"$images"
}

# The registry keeps every pushed tag. Before it starts, untag all but the references in images.env and let
# its garbage collector delete the manifests and blobs nothing current refers to; the current layers stay,
# so the next build still pushes only what changed.
prune_registry() {
  local env_file="$1" repos="$REGISTRY_DIR/docker/registry/v2/repositories" keep="" key ref tag
  [[ -d "$repos/kubeforge" ]] || return 0
  while IFS='=' read -r key ref; do
    [[ "$key" == KUBEFORGE_IMAGE_* ]] && keep+=" ${ref#localhost/}"
  done <"$env_file"
  for tag in "$repos"/kubeforge/*/_manifests/tags/*; do
    [[ -d "$tag" ]] || continue
    ref="${tag#"$repos/"}"
    ref="${ref%%/_manifests/*}:${tag##*/}"
    [[ "$keep " == *" $ref "* ]] || rm -rf "$tag"
  done
  cat >"$RUN_DIR/registry-gc.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $REGISTRY_DIR}}
EOF
  docker-registry garbage-collect --delete-untagged "$RUN_DIR/registry-gc.yml" >"$RUN_DIR/logs/registry-gc.log" 2>&1 \
    || log "registry garbage collection failed (see $RUN_DIR/logs/registry-gc.log); continuing"
}

start_kubelet() {
  running kubelet && return 0
  "$BIN/kubelet" --kubeconfig "$KUBECONFIG_PATH" --config "$RUN_DIR/kubelet.yaml" --root-dir "$RUN_DIR/kubelet" \
    --cert-dir "$RUN_DIR/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "kubeforge.io/real-node=true,kubeforge.io/node-type=cpu" --v=1 \
    >"$RUN_DIR/logs/kubelet.log" 2>&1 9>&- &
  echo $! >"$RUN_DIR/pids/kubelet.pid"
}

# KWOK's controller manages only nodes annotated kwok.x-k8s.io/node=fake; this node must never carry it.
wait_node() {
  local deadline=$((SECONDS + 120))
  until kc get node "$NODE_NAME" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "node $NODE_NAME did not register (see $RUN_DIR/logs/kubelet.log)"
    running kubelet || die "kubelet exited (see $RUN_DIR/logs/kubelet.log)"
    sleep 1
  done
  kc wait --for=condition=Ready "node/$NODE_NAME" --timeout="$((deadline - SECONDS))s" >&2 \
    || die "node $NODE_NAME not Ready (see $RUN_DIR/logs/kubelet.log)"
}

# localStorageCapacityIsolation is off (see the header), so the kubelet reports no ephemeral-storage, and the
# scheduler and the kubelet's admission would refuse every workload pod: they request ephemeral-storage for
# their /tmp emptyDir. Advertise the node filesystem's size, what a kubelet with isolation reports (cAdvisor's
# root filesystem capacity); the kubelet keeps a capacity it does not manage and derives allocatable from it.
advertise_ephemeral_storage() {
  local kib
  kib="$(df -Pk "$RUN_DIR" | awk 'NR == 2 {print $2}')"
  [[ "$kib" =~ ^[0-9]+$ ]] || die "cannot read the size of the filesystem under $RUN_DIR"
  kc patch node "$NODE_NAME" --subresource=status --type=merge \
    -p "{\"status\": {\"capacity\": {\"ephemeral-storage\": \"${kib}Ki\"}}}" >/dev/null
}

# Pods on the bridge reach the API server through the `kubernetes` Service's ClusterIP. There is no kube-proxy
# here, so one DNAT rule does its job for that one Service (the API server listens on the node IP too).
service_route() {
  local ip port
  ip="$(kc get svc kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
  port="$(sed -n 's#.*server: https://[^:]*:\([0-9]*\).*#\1#p' "$KUBECONFIG_PATH" | head -n1)"
  [[ -n "$ip" && -n "$port" ]] || die "cannot find the kubernetes Service IP or the API server port"
  iptables -t nat -C PREROUTING -d "$ip/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$port" 2>/dev/null \
    || iptables -t nat -A PREROUTING -d "$ip/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$port"
  echo "$ip $port" >"$RUN_DIR/service-route"
}

cmd_up() {
  local env_file="$1"
  [[ -s "$env_file" ]] || die "$env_file missing: run hack/build-images.sh first"
  [[ -x "$BIN/kubelet" ]] || die "$BIN/kubelet missing: run hack/build-tools.sh"
  ensure_packages
  ensure_bridge
  # shellcheck disable=SC1090
  local pause; pause="$(sed -n 's/^KUBEFORGE_IMAGE_PAUSE=//p' "$env_file")"
  write_configs "$REGISTRY/${pause#localhost/}"
  start_registry "$env_file"
  start_containerd
  push_and_pull "$env_file"
  start_kubelet
  wait_node
  advertise_ephemeral_storage
  service_route
  # Static PersistentVolumes on this node (hostPath under $RUN_DIR/volumes) carry this class.
  mkdir -p "$RUN_DIR/volumes"
  kc apply -f - >&2 <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: kubeforge-node-local, labels: {app.kubernetes.io/part-of: kubeforge-tests}}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
EOF
  log "node $NODE_NAME Ready at $NODE_IP (logs: $RUN_DIR/logs)"
}

stop_pid() {
  local name="$1" pid i
  [[ -f "$RUN_DIR/pids/$name.pid" ]] || return 0
  pid="$(cat "$RUN_DIR/pids/$name.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/pids/$name.pid"
}

cmd_down() {
  [[ -d "$RUN_DIR" ]] || return 0
  stop_pid kubelet
  # Containers outlive containerd (their shims are separate processes): stop them first.
  if running containerd; then
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(ctr_ containers ls -q 2>/dev/null); do
      ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true
      ctr_ containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd
  stop_pid registry
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $SOCK" 2>/dev/null || true
  if [[ -f "$RUN_DIR/service-route" ]]; then
    read -r ip port <"$RUN_DIR/service-route"
    iptables -t nat -D PREROUTING -d "$ip/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$port" 2>/dev/null || true
  fi
  # The kubelet bind-mounts its root dir and every pod volume; containerd mounts sandboxes' shm and rootfs.
  local m
  for m in $(awk -v d="$RUN_DIR" -v c="$NODE_DIR/containerd" 'index($2, d) == 1 || index($2, c) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$RUN_DIR"
  ip link del "$BRIDGE" 2>/dev/null || true
  log "node $NODE_NAME stopped"
}

cmd_status() {
  running kubelet && running containerd || { log "node is down"; return 1; }
  kc get node "$NODE_NAME" -o wide >&2
}

case "${1:-}" in
  up) cmd_up "${2:?usage: $0 up IMAGES_ENV}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up IMAGES_ENV|down|status" >&2; exit 2 ;;
esac
