"""Pure manifest builders shared by every kind: names, labels, pods, Jobs (their config in the pod), Services.

Builders take validated models and return plain dicts (what `kubectl apply` would send); they never
talk to the API server, so golden-file tests pin their output exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ..api.v1alpha1 import KubeResource
from ..api.v1alpha1.common import RESERVED_KEY, Distributed, PodOverrides, Resources, StorageLocation
from ..deepspeed import DEEPSPEED_ENV, DEEPSPEED_FILE
from ..settings import OperatorSettings
from ..stage import (
    CONFIG_FILE,
    CONFIG_MOUNT,
    DEFAULT_PVC_ROOT,
    PVC_ROOT_ENV,
    StageConfig,
    run_name,
    stage_command,
)

Manifest = dict[str, Any]

PART_OF = "kubeforge"
MANAGED_BY = "kubeforge-operator"
LABEL_KIND = "kubeforge.io/kind"
LABEL_OWNER = "kubeforge.io/owner"
LABEL_GENERATION = "kubeforge.io/generation"
# The input revision of a re-run after an input moved (absent on a generation's first run).
LABEL_REVISION = "kubeforge.io/input-revision"
LABEL_STAGE = "kubeforge.io/stage"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# JSON object of annotations copied onto the pod template (e.g. sidecar or test-harness annotations).
POD_ANNOTATIONS_ANNOTATION = "kubeforge.io/pod-annotations"
CONFIG_DIGEST_ANNOTATION = "kubeforge.io/config-digest"
# Pod annotations that carry the stage's files (config.yaml, deepspeed.json), mounted by a downwardAPI volume.
STAGE_FILE_ANNOTATION_PREFIX = "stage.kubeforge.io/"
# Kubernetes refuses an object whose annotations take more than 256 KiB in all; the stage's files keep 16 KiB
# of that for the user's pod annotations (kubeforge.io/pod-annotations) and the Prometheus ones.
STAGE_FILES_BUDGET = 256 * 1024 - 16 * 1024
# Local disk (the /tmp emptyDir: Hugging Face cache, Triton's S3 downloads) of a pod without
# resources.ephemeralStorage.
DEFAULT_EPHEMERAL_STORAGE = "20Gi"
TORCH_MASTER_PORT = 29500
STAGE_CONTAINER = "stage"
RUN_AS_USER = 1000
MAX_CHILD_NAME = 52  # Job names become pod hostnames `<job>-<index>` and label values (<= 63).


def short_hash(text: str, length: int = 5) -> str:
    """Stable hex suffix used when a name must be shortened."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def generation(resource: KubeResource) -> int:
    """metadata.generation (1 for objects not from an API server)."""
    return int(resource.metadata.get("generation") or 1)


_generation = generation  # child_name's `generation` parameter shadows the function


def child_name(resource: KubeResource, stage: str, generation: int | None = None, revision: int = 0) -> str:
    """Deterministic child name `<name>-<stage>-<run>` (run: `g<generation>[-r<revision>]`), hashed when too long.

    Determinism is what makes reconciles idempotent across operator restarts: the same object at the same
    generation and input revision always maps to the same Job, so a second create answers 409 instead of
    running twice.
    """
    run = run_name(generation if generation is not None else _generation(resource), revision)
    name = f"{resource.name}-{stage}-{run}"
    if len(name) <= MAX_CHILD_NAME:
        return name
    suffix = f"-{short_hash(name)}-{run}"
    return resource.name[: MAX_CHILD_NAME - len(suffix)].rstrip("-") + suffix


def dns1035(name: str) -> str:
    """Service names must start with a letter."""
    return name if name[:1].isalpha() else f"kf-{name}"[:63]


def get_labels(resource: KubeResource, component: str, app: str = "kubeforge-stage") -> dict[str, str]:
    """Recommended app.kubernetes.io labels plus the kubeforge.io owner labels the controllers select on."""
    return {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": resource.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_KIND: resource.kind,
        LABEL_OWNER: resource.name,
    }


def get_owner_reference(resource: KubeResource) -> dict[str, Any]:
    """Controller owner reference: children are garbage-collected with their owner (no finalizer needed)."""
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "name": resource.name,
        "uid": str(resource.metadata.get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def get_metadata(
    resource: KubeResource,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Child metadata: namespace, labels, owner reference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": resource.namespace,
        "labels": dict(labels),
        "ownerReferences": [get_owner_reference(resource)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def get_pod_security_context() -> dict[str, Any]:
    """Pod-level settings of the Pod Security `restricted` profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def get_container_security_context() -> dict[str, Any]:
    """Container-level settings of the Pod Security `restricted` profile."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def ephemeral_storage(res: Resources) -> str:
    """The pod's local disk: `resources.ephemeralStorage`, else DEFAULT_EPHEMERAL_STORAGE."""
    return res.ephemeral_storage or DEFAULT_EPHEMERAL_STORAGE


def get_resource_requirements(res: Resources) -> dict[str, Any]:
    """Requests and limits; GPUs are extended resources, so request == limit. Ephemeral storage bounds the
    pod's local disk (the `/tmp` emptyDir of `scratch_volume`, logs, writable layer): request == limit."""
    disk = ephemeral_storage(res)
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory, "ephemeral-storage": disk}
    limits: dict[str, str] = {"memory": res.memory, "ephemeral-storage": disk}
    if res.gpu:
        requests[GPU_RESOURCE] = str(res.gpu)
        limits[GPU_RESOURCE] = str(res.gpu)
    return {"requests": requests, "limits": limits}


def scratch_volume(res: Resources) -> dict[str, Any]:
    """The `/tmp` emptyDir, bounded like the container's ephemeral-storage (kubelet evicts beyond it)."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": ephemeral_storage(res)}}


def get_scheduling(res: Resources, settings: OperatorSettings) -> dict[str, Any]:
    """nodeSelector (incl. GPU product), tolerations, affinity, spread constraints and priority class.

    nodeSelector layers, later wins on a shared key: the chart's `workloadPodDefaults`, `resources.nodeSelector`,
    `resources.podOverrides.nodeSelector`, then the GPU product of `resources.gpuType`. Tolerations add up.
    """
    defaults = settings.workload_pod_defaults
    ov = res.pod_overrides or PodOverrides()
    out: dict[str, Any] = {}
    selector = {**defaults.node_selector, **(res.node_selector or {}), **(ov.node_selector or {})}
    if res.gpu_type:
        selector[GPU_PRODUCT_LABEL] = res.gpu_type
    if selector:
        out["nodeSelector"] = dict(sorted(selector.items()))
    tolerations: list[dict[str, Any]] = []
    for tol in (*(res.tolerations or []), *(ov.tolerations or []), *defaults.tolerations):
        wire = tol.to_wire()
        if wire not in tolerations:
            tolerations.append(wire)
    if res.gpu and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        out["tolerations"] = tolerations
    affinity = ov.affinity.to_wire() if ov.affinity is not None else {}
    if affinity:
        out["affinity"] = affinity
    if ov.topology_spread_constraints:
        out["topologySpreadConstraints"] = [c.to_wire() for c in ov.topology_spread_constraints]
    priority = ov.priority_class_name or res.priority_class_name
    if priority:
        out["priorityClassName"] = priority
    return out


def pod_annotations_from(resource: KubeResource, allow_reserved: bool = False) -> dict[str, str]:
    """Annotations the user asked to copy onto pods (`kubeforge.io/pod-annotations`, a JSON object).

    Keys under the reserved prefixes (kubeforge.io/, kubernetes.io/, k8s.io/ and their subdomains: an AppArmor
    `unconfined` annotation, a forged `kubeforge.io/result`, ...) are refused unless `allow_reserved` (the
    operator's test hooks, for KWOK's `kubeforge.io/test-fail`). `spec.resources.podOverrides.annotations` is
    the way to annotate pods that the API server checks at admission.
    """
    raw = (resource.metadata.get("annotations") or {}).get(POD_ANNOTATIONS_ANNOTATION)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"metadata.annotations[{POD_ANNOTATIONS_ANNOTATION}]: must be a JSON object of strings ({exc.msg})"
        ) from exc
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise ValueError(f"metadata.annotations[{POD_ANNOTATIONS_ANNOTATION}]: must be a JSON object of strings")
    reserved = sorted(str(k) for k in parsed if re.match(RESERVED_KEY, str(k)))
    if reserved and not allow_reserved:
        raise ValueError(
            f"metadata.annotations[{POD_ANNOTATIONS_ANNOTATION}]: keys under kubeforge.io/, kubernetes.io/ and k8s.io/ "
            f"(and their subdomains) are reserved: {', '.join(reserved)}"
        )
    return {str(k): v for k, v in parsed.items()}


def _overlaps(a: str, b: str) -> bool:
    """Two mount paths where one would hide, or sit inside, the other."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def add_pod_overrides(pod_spec: dict[str, Any], ov: PodOverrides | None) -> None:
    """Add the allow-listed env, volumes and mounts of `podOverrides` to the pod's single container, in place.

    PodOverrides has no field that reaches security settings, images or commands, so nothing here can. A name
    or path the operator already uses is refused (ValueError, reported as InvalidSpec) rather than merged:
    the API server rejects the reserved names, this also catches what depends on settings (the store's path).
    """
    if ov is None:
        return
    (container,) = pod_spec["containers"]
    if ov.env:
        taken = {e["name"] for e in container.get("env", [])}
        clash = sorted(e.name for e in ov.env if e.name in taken)
        if clash:
            raise ValueError(f"podOverrides.env: {', '.join(clash)} is set by the operator")
        container.setdefault("env", []).extend(e.to_wire() for e in ov.env)
    if ov.volumes:
        taken = {v["name"] for v in pod_spec.get("volumes", [])}
        clash = sorted(v.name for v in ov.volumes if v.name in taken)
        if clash:
            raise ValueError(f"podOverrides.volumes: {', '.join(clash)} is used by the operator")
        pod_spec.setdefault("volumes", []).extend(v.to_wire() for v in ov.volumes)
    if ov.volume_mounts:
        for mount in ov.volume_mounts:
            for existing in container.get("volumeMounts", []):
                if _overlaps(mount.mount_path, existing["mountPath"]):
                    raise ValueError(
                        f"podOverrides.volumeMounts: {mount.mount_path} overlaps the operator's mount at "
                        f"{existing['mountPath']}"
                    )
        container.setdefault("volumeMounts", []).extend(m.to_wire() for m in ov.volume_mounts)


def enforce_restricted(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The operator's security settings, applied last so that nothing before wins (Pod Security `restricted`)."""
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["securityContext"] = get_pod_security_context()
    for container in pod_spec["containers"]:
        container["securityContext"] = get_container_security_context()
    return pod_spec


def pod_template_metadata(
    resource: KubeResource,
    res: Resources,
    settings: OperatorSettings,
    labels: dict[str, str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    """Pod template labels and annotations: the chart's defaults < the object's podOverrides < the operator's.

    The operator's labels (selectors, owner) and annotations (metrics) win over the object's; the
    `kubeforge.io/pod-annotations` annotation keeps its historical place on top.
    """
    ov = res.pod_overrides or PodOverrides()
    meta: dict[str, Any] = {"labels": {**(ov.labels or {}), **labels}}
    merged = {
        **settings.workload_pod_defaults.annotations,
        **(ov.annotations or {}),
        **annotations,
        **pod_annotations_from(resource, allow_reserved=settings.test_hooks),
    }
    if merged:
        meta["annotations"] = merged
    return meta


def _pvc_claims(value: Any) -> set[str]:
    """Every claim named by a `pvc://claim/...` string anywhere in `value`."""
    if isinstance(value, str):
        if value.startswith("pvc://"):
            claim = value.removeprefix("pvc://").split("/", 1)[0]
            return {claim} if claim else set()
        return set()
    if isinstance(value, dict):
        return set().union(*(_pvc_claims(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_pvc_claims(v) for v in value)) if value else set()
    return set()


@dataclass
class Storage:
    """Volumes, mounts and env that give a container its artifact store and credentials."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    env: list[dict[str, Any]]


def get_storage(uris: Any, settings: OperatorSettings, output: StorageLocation | None) -> Storage:
    """PVCs named by any `pvc://` URI (mounted at DEFAULT_PVC_ROOT/<claim>), the store PVC, S3 credentials.

    A store root that is a plain path or `file://` (e.g. the chart's `/var/lib/kubeforge/store`) gets the
    artifact PVC mounted at that path, so `stage.local_path()` resolves the same way inside the pod.
    """
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    claims = _pvc_claims(uris)
    root = settings.store_root
    if root.startswith("pvc://"):
        claims |= _pvc_claims(root)
    for claim in sorted(claims):
        vol = f"pvc-{claim}"[:63]
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": vol, "mountPath": f"{DEFAULT_PVC_ROOT}/{claim}"})
    if root.startswith("file://") or "://" not in root:
        path = root.removeprefix("file://").rstrip("/") or "/"
        volumes.append({"name": "artifact-store", "persistentVolumeClaim": {"claimName": settings.artifact_pvc}})
        mounts.append({"name": "artifact-store", "mountPath": path})
    env: list[dict[str, Any]] = [{"name": PVC_ROOT_ENV, "value": DEFAULT_PVC_ROOT}]
    if output is not None and output.s3_secret is not None:
        sec = output.s3_secret
        env.append(
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": sec.name, "key": sec.access_key_id_key}},
            }
        )
        env.append(
            {
                "name": "AWS_SECRET_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": sec.name, "key": sec.secret_access_key_key}},
            }
        )
    if output is not None and output.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": output.s3_endpoint})
    return Storage(volumes=volumes, mounts=mounts, env=env)


def is_distributed(dist: Distributed | None) -> bool:
    """More than one worker process: run under torchrun in an Indexed Job."""
    return dist is not None and (dist.nodes > 1 or dist.processes_per_node > 1)


def torchrun_command(config: StageConfig, dist: Distributed, master_addr: str) -> list[str]:
    """The shared stage command with `python` replaced by a torchrun launcher (same module, stage and config)."""
    cmd = stage_command(config)
    assert cmd[0] == "python", cmd
    return [
        "torchrun",
        "--nnodes",
        str(dist.nodes),
        "--nproc-per-node",
        str(dist.processes_per_node),
        "--node-rank",
        "$(NODE_RANK)",
        "--master-addr",
        master_addr,
        "--master-port",
        str(TORCH_MASTER_PORT),
        *cmd[1:],
    ]


def config_volume(files: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """The stage's files carried by the pod itself: (pod annotations, downwardAPI volume) that mounts each
    annotation as a file under CONFIG_MOUNT.

    No ConfigMap to create (one API write per stage, and one object per run, fewer), nothing another object
    of the same name could have left behind, and the config cannot change under a running pod (annotations
    of a Job's pod template are immutable). The pod's annotations hold at most 256 KiB in all
    (`check_stage_files` refuses a larger config before the Job is sent)."""
    annotations = {STAGE_FILE_ANNOTATION_PREFIX + name: text for name, text in sorted(files.items())}
    items = [{"path": name, "fieldRef": {"fieldPath": f"metadata.annotations['{key}']"}}
             for name, key in ((n, STAGE_FILE_ANNOTATION_PREFIX + n) for n in sorted(files))]
    return annotations, {"name": "config", "downwardAPI": {"items": items}}


def check_stage_files(resource: KubeResource, files: dict[str, str]) -> None:
    """ValueError (the object's InvalidSpec) when the stage's files would not fit in the pod's annotations,
    naming the spec field that takes the most room, instead of the API server's refusal of the Job."""
    size = sum(len(STAGE_FILE_ANNOTATION_PREFIX + name) + len(text.encode()) for name, text in files.items())
    if size <= STAGE_FILES_BUDGET:
        return
    spec: dict[str, Any] = resource.to_wire().get("spec") or {}
    sizes = {key: len(json.dumps(value, ensure_ascii=False).encode()) for key, value in spec.items()}
    largest = max(sizes, key=lambda key: sizes[key])
    raise ValueError(
        f"the stage's config is {size // 1024} KiB and a pod's annotations, which carry it, hold at most "
        f"{STAGE_FILES_BUDGET // 1024} KiB (Kubernetes: 256 KiB in all); spec.{largest} takes "
        f"{sizes[largest] // 1024} KiB of it: shorten it (long texts belong in a Dataset)"
    )


def stage_file(job: Manifest, name: str = CONFIG_FILE) -> str:
    """A file the Job's pods mount from their annotations (`config_volume`), as the stage reads it."""
    return str(job["spec"]["template"]["metadata"]["annotations"][STAGE_FILE_ANNOTATION_PREFIX + name])


def get_headless_service(resource: KubeResource, job_name: str, labels: dict[str, str]) -> Manifest:
    """Headless Service giving Indexed Job pods stable DNS names `<job>-<index>.<svc>` for rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": get_metadata(resource, dns1035(job_name), labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: job_name},
            "ports": [{"name": "torch", "port": TORCH_MASTER_PORT, "targetPort": TORCH_MASTER_PORT}],
        },
    }


def metrics_annotations(port: int | None) -> dict[str, str]:
    """prometheus.io scrape annotations for a pod exposing metrics on `port`."""
    if not port:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def get_stage_workload(
    resource: KubeResource,
    config: StageConfig,
    settings: OperatorSettings,
    *,
    image: str,
    resources: Resources,
    backoff_limit: int,
    output: StorageLocation | None,
    distributed: Distributed | None = None,
    deepspeed: dict[str, Any] | None = None,
    revision: int = 0,
) -> list[Manifest]:
    """(headless Service +) batch/v1 Job running one stage; ordered for creation.

    The pod's `config.yaml` (a downwardAPI file of its annotation) is `StageConfig.dump()` and the command is
    `stage_command(config)`,
    the very functions the local runner uses, so a local run and a cluster run execute the same thing.
    """
    gen = _generation(resource)
    name = child_name(resource, config.stage, gen, revision)
    labels = {**get_labels(resource, config.stage), LABEL_STAGE: config.stage, LABEL_GENERATION: str(gen)}
    if revision:
        labels[LABEL_REVISION] = str(revision)
    data = {CONFIG_FILE: config.dump()}
    distributed_run = is_distributed(distributed)
    if deepspeed is not None:
        data[DEEPSPEED_FILE] = json.dumps(deepspeed, indent=2, sort_keys=True) + "\n"
    check_stage_files(resource, data)
    file_annotations, config_files = config_volume(data)
    children: list[Manifest] = []

    storage = get_storage(config.to_wire(), settings, output)
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        *storage.env,
    ]
    if deepspeed is not None:
        env.append({"name": DEEPSPEED_ENV, "value": f"{CONFIG_MOUNT}/{DEEPSPEED_FILE}"})
    command = stage_command(config)
    job_spec_extra: dict[str, Any] = {}
    pod_extra: dict[str, Any] = {}
    if distributed_run:
        assert distributed is not None
        svc = dns1035(name)
        children.append(get_headless_service(resource, name, labels))
        master = f"{name}-0.{svc}"
        command = torchrun_command(config, distributed, master)
        env += [
            {"name": "MASTER_ADDR", "value": master},
            {"name": "MASTER_PORT", "value": str(TORCH_MASTER_PORT)},
            {"name": "WORLD_SIZE", "value": str(distributed.world_size)},
            {"name": "NPROC_PER_NODE", "value": str(distributed.processes_per_node)},
            {
                "name": "NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
            },
        ]
        job_spec_extra = {
            "completionMode": "Indexed",
            "completions": distributed.nodes,
            "parallelism": distributed.nodes,
        }
        pod_extra = {"subdomain": svc}

    volumes: list[dict[str, Any]] = [
        config_files,
        scratch_volume(resources),
        *storage.volumes,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        *storage.mounts,
    ]
    if distributed_run or resources.gpu:
        # NCCL and DataLoader workers exchange tensors through /dev/shm; the 64 MiB default is too small.
        # Memory-backed, so it counts against (and is bounded by) the memory limit.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": resources.memory}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})

    container: dict[str, Any] = {
        "name": STAGE_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": env,
        "resources": get_resource_requirements(resources),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.metrics_port:
        container["ports"] = [{"name": "metrics", "containerPort": config.metrics_port, "protocol": "TCP"}]
    if distributed_run:
        container.setdefault("ports", []).append(
            {"name": "torch", "containerPort": TORCH_MASTER_PORT, "protocol": "TCP"}
        )

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        **pod_extra,
        **get_scheduling(resources, settings),
        "containers": [container],
        "volumes": volumes,
    }
    add_pod_overrides(pod_spec, resources.pod_overrides)
    enforce_restricted(pod_spec)
    job_labels = dict(labels)
    if resources.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = resources.queue_name
    template_meta = pod_template_metadata(
        resource, resources, settings, labels, {**metrics_annotations(config.metrics_port), **file_annotations}
    )
    job: Manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": get_metadata(resource, name, job_labels, {CONFIG_DIGEST_ANNOTATION: config.digest()}),
        "spec": {
            "backoffLimit": backoff_limit,
            **job_spec_extra,
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }
    children.append(job)
    return children
