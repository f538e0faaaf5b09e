#!/usr/bin/env bash
# A real Kubernetes control plane for tests: kube-apiserver + etcd + kube-controller-manager +
# kube-scheduler run as local processes by kwokctl (binary runtime), with KWOK faking the nodes
# (2 GPU nodes, 1 CPU node) and pod lifecycles (pods of Jobs go Running -> Succeeded).
#
# Usage: hack/test-cluster.sh up|down|status|kubeconfig
#   up          build the tools (hack/build-tools.sh) and images (hack/build-images.sh) if needed, start
#               the cluster and the real node (hack/real-node.sh; no-op when already up), wait until
#               they are ready, print the kubeconfig path on stdout (only that line).
#   down        delete the cluster and its working directory.
#   status      report whether the cluster answers, and list its nodes; exit 1 when it is down.
#   kubeconfig  print the kubeconfig path; exit 1 when the cluster is down.
#
# Environment: KUBEFORGE_REAL_NODE_ENABLED (default 1; 0: KWOK nodes only, no images), KUBEFORGE_TOOLS_DIR (default ~/.cache/kubeforge/tools), KUBEFORGE_CLUSTER_NAME
# (default kubeforge-test), KWOK_WORKDIR (default $KUBEFORGE_TOOLS_DIR/kwok).
#
# Why kwokctl's binary runtime: there is no Docker here; every binary is a local path, so
# kwokctl downloads nothing. Messages go to stderr so `export KUBECONFIG=$(hack/test-cluster.sh up)` works.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS_DIR="${KUBEFORGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge/tools}"
BIN="$TOOLS_DIR/bin"
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CLUSTER_NAME="${KUBEFORGE_CLUSTER_NAME:-kubeforge-test}"
export KWOK_WORKDIR="${KWOK_WORKDIR:-$TOOLS_DIR/kwok}"
CLUSTER_DIR="$KWOK_WORKDIR/clusters/$CLUSTER_NAME"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig.yaml"
LOGS_DIR="${KUBEFORGE_CLUSTER_LOGS_DIR:-$TOOLS_DIR/logs}"
GPU_PRODUCT="${KUBEFORGE_TEST_GPU_PRODUCT:-NVIDIA-H100-80GB-HBM3}"
READY_TIMEOUT="${KUBEFORGE_CLUSTER_TIMEOUT:-180}"
# The real node (kubelet + containerd) beside the KWOK nodes; 0 skips it and the image build (KWOK only).
REAL_NODE="${KUBEFORGE_REAL_NODE_ENABLED:-1}"
NODE_IP="${KUBEFORGE_NODE_IP:-10.244.0.1}"
API_SERVICE_IP=10.0.0.1  # first address of kube-apiserver's default service range

log() { printf '[test-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

api_ready() {
  [[ -f "$KUBECONFIG_PATH" && -x "$BIN/kubectl" ]] \
    && kc get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

# Copy kwokctl's component logs somewhere stable and say where, so a failed start can be debugged.
save_logs() {
  local dest
  dest="$LOGS_DIR/$CLUSTER_NAME-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$dest"
  if [[ -d "$CLUSTER_DIR/logs" ]]; then cp -r "$CLUSTER_DIR/logs/." "$dest/" 2>/dev/null || true; fi
  [[ -f "$CLUSTER_DIR/kwok.yaml" ]] && cp "$CLUSTER_DIR/kwok.yaml" "$dest/" 2>/dev/null || true
  log "component logs copied to $dest"
}

ensure_tools() {
  local out
  out="$(bash "$HACK_DIR/build-tools.sh")" || die "hack/build-tools.sh failed (see its output above)"
  BIN="$(printf '%s\n' "$out" | tail -n1)"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet etcd kwok kwokctl; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b missing after hack/build-tools.sh"
  done
  export PATH="$BIN:$PATH"  # kwokctl's binary runtime runs `kubectl` from PATH
}

# Default KWOK stages, taken verbatim from the kwok module source: giving any Stage in the config
# replaces all of kwokctl's defaults, so they are passed explicitly next to our failure stage.
default_stages() {
  local src="${GOMODCACHE:-$TOOLS_DIR/gomodcache}/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  local f
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f "$src/$f" ]] || die "KWOK stage $src/$f not found (run hack/build-tools.sh to fill the module cache)"
    printf -- '---\n'; cat "$src/$f"
  done
}

write_config() {
  local cfg="$1"
  {
    cat <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  kubeVersion: $K8S_VERSION
  kwokVersion: $KWOK_VERSION
  kubeBinaryPrefix: $BIN
  kubectlBinary: $BIN/kubectl
  etcdBinary: $BIN/etcd
  kwokControllerBinary: $BIN/kwok
  bindAddress: 127.0.0.1
  securePort: true
  kubeAuthorization: true
  kubeAdmission: true
  # Pods on the real node reach the API server at the node IP, through the `kubernetes` Service's IP.
  kubeApiserverCertSANs: ["$NODE_IP", "$API_SERVICE_IP"]
componentsPatches:
- name: kube-apiserver
  extraArgs:
  # Listen on the node IP as well as loopback; advertise it as the `kubernetes` Service endpoint.
  - {key: bind-address, value: 0.0.0.0, override: true}
  - {key: advertise-address, value: "$NODE_IP"}
  # `kubectl logs/exec/port-forward` on the real node: the kubelet accepts the cluster CA's admin cert.
  - {key: kubelet-client-certificate, value: "$CLUSTER_DIR/pki/admin.crt"}
  - {key: kubelet-client-key, value: "$CLUSTER_DIR/pki/admin.key"}
  # The node's name does not resolve on this machine; its InternalIP does.
  - {key: kubelet-preferred-address-types, value: "InternalIP,Hostname"}
  # Namespaces annotated for the real node get its nodeSelector and toleration (see real_namespace).
  - {key: enable-admission-plugins, value: "PodNodeSelector,PodTolerationRestriction"}
# kwokctl starts KWOK with --manage-all-nodes=true: it would fake the real node's pods (KWOK IPs, instant
# "Completed"). It must manage only the nodes annotated as fake.
- name: kwok-controller
  extraArgs:
  - {key: manage-all-nodes, value: "false", override: true}
  - {key: manage-nodes-with-annotation-selector, value: kwok.x-k8s.io/node=fake}
- name: kube-controller-manager
  extraArgs:
  # One instance: no leader election. Under load (2 cores, image builds) a missed lease renewal made the
  # controller-manager exit for good ("leaderelection lost"), and with it Jobs, GC and ServiceAccounts.
  - {key: leader-elect, value: "false"}
  # The default 20 QPS starves Job and GC work when a test creates 1,000 objects.
  - {key: kube-api-qps, value: "200"}
  - {key: kube-api-burst, value: "400"}
  - {key: concurrent-job-syncs, value: "20"}
  - {key: concurrent-gc-syncs, value: "50"}
- name: kube-scheduler
  extraArgs:
  - {key: leader-elect, value: "false"}
EOF
    default_stages
    cat <<'EOF'
---
# Kubeforge failure-path stage: a Running pod annotated kubeforge.io/test-fail: "true" fails with
# exit code 1 and a termination message (annotation kubeforge.io/test-fail-message overrides it).
# weight 1 beats pod-complete (weight 0) for the pods it selects.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubeforge-pod-fail
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.annotations["kubeforge.io/test-fail"]'
      operator: 'In'
      values:
      - 'true'
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
  weight: 1
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $annotations := or .metadata.annotations dict }}
      {{ $message := or ( index $annotations "kubeforge.io/test-fail-message" ) "kubeforge test failure: simulated crash" }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodFailed
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodFailed
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 1
            reason: Error
            message: {{ $message | Quote }}
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
EOF
  } >"$cfg"
}

# Fake nodes; kwok's node-initialize stage keeps capacity/allocatable, so the scheduler sees 8 GPUs each.
apply_nodes() {
  local name gpu
  {
    for spec in "kubeforge-gpu-0:8" "kubeforge-gpu-1:8" "kubeforge-cpu-0:0"; do
      name="${spec%%:*}"; gpu="${spec##*:}"
      cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubeforge.io/test-node: "true"
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    type: kwok
EOF
      if [[ "$gpu" != 0 ]]; then
        printf '    nvidia.com/gpu.product: %s\n    nvidia.com/gpu.count: "%s"\n' "$GPU_PRODUCT" "$gpu"
      fi
      cat <<EOF
status:
  capacity: {cpu: "64", memory: 512Gi, pods: "110", ephemeral-storage: 1Ti$( [[ "$gpu" != 0 ]] && printf ', nvidia.com/gpu: "%s"' "$gpu")}
  allocatable: {cpu: "64", memory: 512Gi, pods: "110", ephemeral-storage: 1Ti$( [[ "$gpu" != 0 ]] && printf ', nvidia.com/gpu: "%s"' "$gpu")}
  nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: fake, kubeProxyVersion: fake, containerRuntimeVersion: fake, kernelVersion: fake, osImage: fake, bootID: "", machineID: "", systemUUID: ""}
  phase: Running
EOF
    done
  } | kc apply -f - >&2
}

wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  until api_ready; do
    ((SECONDS < deadline)) || { log "API server not ready after ${READY_TIMEOUT}s"; return 1; }
    sleep 1
  done
  apply_nodes || return 1
  kc wait --for=condition=Ready node -l kubeforge.io/test-node=true --timeout="$((deadline - SECONDS))s" >&2 \
    || { log "fake nodes not Ready"; return 1; }
  # A namespace rejects pods until its `default` ServiceAccount exists (kube-controller-manager makes it).
  until kc get serviceaccount default -n default >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "default ServiceAccount not created after ${READY_TIMEOUT}s"; return 1; }
    sleep 1
  done
}

# Build (or find cached) images, then start the real node and move them into it. When the node is already
# running, its images are left alone unless KUBEFORGE_REFRESH_IMAGES=1 (`make test` sets it): a test session
# that only needs the cluster must not rebuild images from a tree someone is editing.
real_node_up() {
  [[ "$REAL_NODE" == 1 ]] || return 0
  if [[ "${KUBEFORGE_REFRESH_IMAGES:-0}" != 1 ]] && [[ -s "$TOOLS_DIR/node/run/images.env" ]] \
     && KUBECONFIG_PATH="$KUBECONFIG_PATH" CLUSTER_DIR="$CLUSTER_DIR" BIN="$BIN" bash "$HACK_DIR/real-node.sh" status 2>/dev/null; then
    return 0
  fi
  local env_file
  env_file="$(bash "$HACK_DIR/build-images.sh" build 9>&-)" || die "hack/build-images.sh failed"
  KUBECONFIG_PATH="$KUBECONFIG_PATH" CLUSTER_DIR="$CLUSTER_DIR" BIN="$BIN" \
    bash "$HACK_DIR/real-node.sh" up "$env_file" 9>&- || { save_logs; die "the real node did not come up"; }
}

real_node_down() {
  KUBECONFIG_PATH="$KUBECONFIG_PATH" CLUSTER_DIR="$CLUSTER_DIR" BIN="$BIN" bash "$HACK_DIR/real-node.sh" down || true
}

cmd_up() {
  ensure_tools
  mkdir -p "$KWOK_WORKDIR"
  # Two test sessions starting at once share one cluster. Every kwokctl call below closes fd 9
  # (`9>&-`): the daemons it starts must not inherit the lock, or they would hold it forever.
  exec 9>"$KWOK_WORKDIR/$CLUSTER_NAME.up.lock"
  flock 9
  if api_ready; then
    wait_ready || { save_logs; die "cluster $CLUSTER_NAME answers but is not healthy"; }
    real_node_up
    log "cluster $CLUSTER_NAME already up"
    echo "$KUBECONFIG_PATH"; return
  fi
  local start=$SECONDS
  if [[ -d "$CLUSTER_DIR" ]]; then  # left over (e.g. after a reboot): restart, else recreate
    log "restarting existing cluster $CLUSTER_NAME"
    if "$BIN/kwokctl" start cluster --name "$CLUSTER_NAME" >&2 9>&- && wait_ready; then
      real_node_up
      log "cluster $CLUSTER_NAME up in $((SECONDS - start))s"
      echo "$KUBECONFIG_PATH"; return
    fi
    log "restart failed; recreating"
    save_logs
    delete_cluster 9>&-
  fi
  local cfg="$KWOK_WORKDIR/$CLUSTER_NAME.kwokctl.yaml"
  write_config "$cfg"
  log "creating cluster $CLUSTER_NAME (Kubernetes $K8S_VERSION, workdir $CLUSTER_DIR)"
  if ! "$BIN/kwokctl" create cluster --name "$CLUSTER_NAME" --config "$cfg" --kubeconfig "" \
       --timeout "${READY_TIMEOUT}s" >&2 9>&-; then
    save_logs; delete_cluster 9>&-; die "kwokctl create cluster failed"
  fi
  wait_ready || { save_logs; delete_cluster 9>&-; die "cluster $CLUSTER_NAME did not become ready"; }
  real_node_up
  log "cluster $CLUSTER_NAME up in $((SECONDS - start))s"
  echo "$KUBECONFIG_PATH"
}

# Stop the components and remove the working directory. `--kubeconfig` names the cluster's own file
# (an empty value is an error for delete), so ~/.kube/config is never touched. If kwokctl fails, the
# processes recorded in its pid files are stopped directly so no daemon outlives the cluster.
delete_cluster() {
  real_node_down
  [[ -d "$CLUSTER_DIR" ]] || return 0
  if ! PATH="$BIN:$PATH" "$BIN/kwokctl" delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_PATH" >&2; then
    log "kwokctl delete cluster failed; stopping the processes in $CLUSTER_DIR/pids"
    local f pid
    for f in "$CLUSTER_DIR"/pids/*.pid; do
      [[ -f "$f" ]] || continue
      pid="$(cat "$f")"
      # Only a process running a binary from this cluster's workdir (pid files can be stale).
      if [[ "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1)" == "$CLUSTER_DIR"/* ]]; then
        kill "$pid" 2>/dev/null || true
      fi
    done
  fi
  rm -rf "$CLUSTER_DIR"
}

cmd_down() {
  delete_cluster
  log "cluster $CLUSTER_NAME down"
}

cmd_status() {
  if api_ready; then
    log "cluster $CLUSTER_NAME is up; kubeconfig $KUBECONFIG_PATH"
    kc get nodes -L nvidia.com/gpu.product -L kubeforge.io/real-node >&2
  else
    log "cluster $CLUSTER_NAME is down (start it with: hack/test-cluster.sh up)"
    return 1
  fi
}

cmd_kubeconfig() {
  api_ready || die "cluster $CLUSTER_NAME is down (start it with: hack/test-cluster.sh up)"
  echo "$KUBECONFIG_PATH"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubeconfig) cmd_kubeconfig ;;
  *) echo "usage: $0 up|down|status|kubeconfig" >&2; exit 2 ;;
esac
