"""ModelDeployment → conversion Job (`convert` stage), Triton Deployment(s), Service, optional HPA and PDB.

Canary rollout: a second Deployment `<name>-canary` serves the new version beside the stable one; the
Service selects both tracks, so traffic splits by replica count (canary replicas = ceil(total*weight/100)).
"""

from __future__ import annotations

import math
from typing import Any

from ..api.v1alpha1 import ModelDeployment
from ..settings import OperatorSettings
from ..stage import ResolvedInput, StageConfig, build_stage_config, local_path, run_name
from .naming import Manifest, dns1035, generation, get_labels, get_metadata
from .pods import (
    add_pod_overrides,
    enforce_restricted,
    get_resource_requirements,
    get_scheduling,
    get_storage,
    pod_template_metadata,
    scratch_volume,
)
from .workloads import get_stage_workload, metrics_annotations

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
CONVERSION_BACKOFF_LIMIT = 2
TRITON_COMPONENT = "triton"
LABEL_TRACK = "kubeforge.io/track"
LABEL_VERSION = "kubeforge.io/model-version"
STABLE = "stable"
CANARY = "canary"


def get_stage_config(
    resource: ModelDeployment, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
) -> StageConfig:
    """The shared `convert` stage config (export + quantization + model repository)."""
    return build_stage_config(resource, inputs, settings.store_root, run=run_name(generation(resource), revision))


def get_conversion_children(
    resource: ModelDeployment, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
) -> list[Manifest]:
    """The Job running the conversion in the serving image (its config in the pod: workloads.config_volume)."""
    spec = resource.spec
    return get_stage_workload(
        resource,
        get_stage_config(resource, inputs, settings, revision),
        settings,
        image=settings.serving_image,
        resources=spec.conversion_resources,
        backoff_limit=CONVERSION_BACKOFF_LIMIT,
        output=spec.output,
        revision=revision,
    )


def deployment_name(resource: ModelDeployment, track: str) -> str:
    """`<name>` for the stable track, `<name>-canary` for the canary."""
    return resource.name if track == STABLE else f"{resource.name}-canary"


def service_name(resource: ModelDeployment) -> str:
    """The Service in front of both tracks."""
    return dns1035(resource.name)


def repository_arg(repository_uri: str) -> str:
    """What Triton gets as --model-repository: s3:// as is (Triton reads S3), else the in-pod path."""
    if repository_uri.startswith("s3://"):
        return repository_uri
    return str(local_path(repository_uri))


def total_replicas(resource: ModelDeployment) -> int:
    """Replicas the stable track gets when alone (autoscaling: its minimum)."""
    spec = resource.spec
    return spec.autoscaling.min_replicas if spec.autoscaling is not None else spec.replicas


def split_replicas(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas for a canary at `weight` percent; the stable track keeps at least one."""
    canary = math.ceil(total * weight / 100)
    return max(total - canary, 1), canary


def endpoints(resource: ModelDeployment) -> dict[str, str]:
    """Service DNS names with ports, as written to status.endpoints."""
    host = f"{service_name(resource)}.{resource.namespace}.svc"
    return {"http": f"{host}:{HTTP_PORT}", "grpc": f"{host}:{GRPC_PORT}", "metrics": f"{host}:{METRICS_PORT}"}


def triton_labels(resource: ModelDeployment) -> dict[str, str]:
    """Labels shared by both tracks (the Service selects on these)."""
    return get_labels(resource, TRITON_COMPONENT, app="triton")


def get_triton_deployment(
    resource: ModelDeployment,
    settings: OperatorSettings,
    *,
    track: str,
    version: str,
    repository_uri: str,
    replicas: int | None,
) -> Manifest:
    """A Triton Deployment for one track; `replicas=None` leaves the count to the HPA."""
    spec = resource.spec
    name = deployment_name(resource, track)
    selector = {**triton_labels(resource), LABEL_TRACK: track}
    pod_labels = {**selector, LABEL_VERSION: version}
    storage = get_storage({"repository": repository_uri}, settings, spec.output)
    args = [
        f"--model-repository={repository_arg(repository_uri)}",
        # explicit + load all: a running server never picks up a later conversion written to the same
        # repository, so the stable track keeps serving its version while a canary runs beside it.
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-gpu-metrics=" + ("true" if spec.resources.gpu else "false"),
        "--strict-readiness=true",
    ]
    container: dict[str, Any] = {
        "name": "triton",
        "image": spec.triton.image or settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["tritonserver"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}, *storage.env],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 60,
        },
        "resources": get_resource_requirements(spec.resources),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *storage.mounts,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        **get_scheduling(spec.resources, settings),
        "containers": [container],
        "volumes": [
            scratch_volume(spec.resources),
            # The python backend and Triton's shared-memory IPC need more than the 64 MiB default.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            *storage.volumes,
        ],
    }
    add_pod_overrides(pod_spec, spec.resources.pod_overrides)
    enforce_restricted(pod_spec)
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # Zero-downtime replace: a new pod must be Ready before an old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": pod_template_metadata(
                resource, spec.resources, settings, pod_labels, metrics_annotations(METRICS_PORT)
            ),
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        deploy_spec = {"replicas": replicas, **deploy_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": get_metadata(resource, name, pod_labels),
        "spec": deploy_spec,
    }


def get_triton_service(resource: ModelDeployment) -> Manifest:
    """ClusterIP Service over both tracks (traffic share follows replica counts)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": get_metadata(resource, service_name(resource), triton_labels(resource)),
        "spec": {
            "type": "ClusterIP",
            "selector": triton_labels(resource),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def get_hpa(resource: ModelDeployment) -> Manifest | None:
    """autoscaling/v2 HPA on the stable Deployment's CPU, or None without spec.autoscaling."""
    auto = resource.spec.autoscaling
    if auto is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": get_metadata(resource, deployment_name(resource, STABLE), triton_labels(resource)),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(resource, STABLE),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": auto.target_cpu_utilization},
                    },
                }
            ],
        },
    }


def max_replicas(resource: ModelDeployment) -> int:
    """The most Triton pods of the stable track: the HPA's maximum, else spec.replicas."""
    spec = resource.spec
    return spec.autoscaling.max_replicas if spec.autoscaling is not None else spec.replicas


def get_pdb(resource: ModelDeployment) -> Manifest | None:
    """PodDisruptionBudget over both tracks (maxUnavailable 1: a drain evicts one Triton pod at a time), or
    None when the stable track never has more than one replica (a budget would only block or mean nothing)."""
    if max_replicas(resource) <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": get_metadata(resource, deployment_name(resource, STABLE), triton_labels(resource)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": triton_labels(resource)}},
    }


def get_serving_children(
    resource: ModelDeployment,
    settings: OperatorSettings,
    *,
    stable_version: str,
    stable_repository: str,
    canary_version: str | None = None,
    canary_repository: str | None = None,
) -> list[Manifest]:
    """Service, stable Deployment, optional canary Deployment, HPA and PDB for the given versions.

    With a canary the stable track shrinks to its share; with an HPA the stable count is the HPA's (never
    set here, so the operator and the HPA do not fight) and the canary gets its share of minReplicas.
    """
    total = total_replicas(resource)
    autoscaled = resource.spec.autoscaling is not None
    out: list[Manifest] = [get_triton_service(resource)]
    canary = canary_version is not None and canary_repository is not None
    stable_n, canary_n = split_replicas(total, resource.spec.rollout.canary_weight) if canary else (total, 0)
    out.append(
        get_triton_deployment(
            resource, settings, track=STABLE, version=stable_version,
            repository_uri=stable_repository, replicas=None if autoscaled else stable_n,
        )
    )
    if canary:
        assert canary_version is not None and canary_repository is not None
        out.append(
            get_triton_deployment(
                resource, settings, track=CANARY, version=canary_version,
                repository_uri=canary_repository, replicas=canary_n,
            )
        )
    out += [child for child in (get_hpa(resource), get_pdb(resource)) if child is not None]
    return out
