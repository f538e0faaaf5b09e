"""The pod parts every kind's workloads share: the Pod Security `restricted` settings, resources, scheduling,
podOverrides, pod template metadata and the artifact store's volumes, mounts and credentials."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..api.v1alpha1 import KubeResource
from ..api.v1alpha1.podrules import RESERVED_KEY
from ..api.v1alpha1.podspec import PodOverrides
from ..api.v1alpha1.resources import Resources
from ..api.v1alpha1.storage import StorageLocation
from ..settings import OperatorSettings
from ..stage import DEFAULT_PVC_ROOT, PVC_ROOT_ENV
from .naming import GPU_PRODUCT_LABEL, POD_ANNOTATIONS_ANNOTATION

GPU_RESOURCE = "nvidia.com/gpu"
# Local disk (the /tmp emptyDir: Hugging Face cache, Triton's S3 downloads) of a pod without
# resources.ephemeralStorage.
DEFAULT_EPHEMERAL_STORAGE = "20Gi"
RUN_AS_USER = 1000


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
