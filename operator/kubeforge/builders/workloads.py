"""The stage workload of every kind: a batch/v1 Job (its config carried in the pod's annotations), under
torchrun with a headless Service when distributed.

Builders take validated models and return plain dicts (what `kubectl apply` would send); they never
talk to the API server, so golden-file tests pin their output exactly.
"""

from __future__ import annotations

import json
from typing import Any

from ..api.v1alpha1 import KubeResource
from ..api.v1alpha1.resources import Resources
from ..api.v1alpha1.storage import StorageLocation
from ..api.v1alpha1.training import Distributed
from ..deepspeed import DEEPSPEED_ENV, DEEPSPEED_FILE
from ..settings import OperatorSettings
from ..stage import CONFIG_FILE, CONFIG_MOUNT, StageConfig, stage_command
from .naming import (
    COMPLETION_INDEX_ANNOTATION,
    CONFIG_DIGEST_ANNOTATION,
    JOB_NAME_LABEL,
    KUEUE_QUEUE_LABEL,
    LABEL_GENERATION,
    LABEL_REVISION,
    LABEL_STAGE,
    STAGE_FILE_ANNOTATION_PREFIX,
    Manifest,
    child_name,
    dns1035,
    generation,
    get_labels,
    get_metadata,
)
from .pods import (
    add_pod_overrides,
    enforce_restricted,
    get_resource_requirements,
    get_scheduling,
    get_storage,
    pod_template_metadata,
    scratch_volume,
)

# Kubernetes refuses an object whose annotations take more than 256 KiB in all; the stage's files keep 16 KiB
# of that for the user's pod annotations (kubeforge.io/pod-annotations) and the Prometheus ones.
STAGE_FILES_BUDGET = 256 * 1024 - 16 * 1024
TORCH_MASTER_PORT = 29500
STAGE_CONTAINER = "stage"


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
    gen = generation(resource)
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
