"""Names, labels and metadata of the children every kind creates: the kubeforge.io label and annotation keys,
deterministic child names, owner references.

Like every builder, pure: models in, plain dicts out (what `kubectl apply` would send), never the API server.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..api.v1alpha1 import KubeResource
from ..stage import run_name

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
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# JSON object of annotations copied onto the pod template (e.g. sidecar or test-harness annotations).
POD_ANNOTATIONS_ANNOTATION = "kubeforge.io/pod-annotations"
CONFIG_DIGEST_ANNOTATION = "kubeforge.io/config-digest"
# Pod annotations that carry the stage's files (config.yaml, deepspeed.json), mounted by a downwardAPI volume.
STAGE_FILE_ANNOTATION_PREFIX = "stage.kubeforge.io/"
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
