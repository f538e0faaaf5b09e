"""`spec.resources`: the compute, scheduling and pod overrides of a stage's pods."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import RESOURCE_QUANTITY, KubeModel
from .podrules import LabelValue, NodeSelector, PriorityClassName
from .podspec import PodOverrides, Toleration


class Resources(KubeModel):
    """Compute for the stage's pods."""

    gpu: int = Field(default=0, ge=0, le=64, description="GPUs per pod (`nvidia.com/gpu`).")
    gpu_type: LabelValue | None = Field(
        default=None,
        description="GPU product to schedule on (matched against the `nvidia.com/gpu.product` node label).",
    )
    cpu: str = Field(
        default="1", max_length=64, pattern=RESOURCE_QUANTITY, description="CPU request (Kubernetes quantity)."
    )
    memory: str = Field(
        default="4Gi", max_length=64, pattern=RESOURCE_QUANTITY, description="Memory request (Kubernetes quantity)."
    )
    ephemeral_storage: str | None = Field(
        default=None,
        max_length=64,
        pattern=RESOURCE_QUANTITY,
        description=(
            "Local scratch space per pod (Kubernetes quantity; unset: 20Gi): the `/tmp` emptyDir's sizeLimit "
            "(Hugging Face cache, Triton's S3 downloads) and the container's ephemeral-storage request and limit."
        ),
    )
    node_selector: NodeSelector | None = Field(default=None, description="Node labels the pods must match.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = Field(
        default=None, description="Taints the pods tolerate."
    )
    priority_class_name: PriorityClassName | None = Field(
        default=None, description="PriorityClass of the pods (not a system-* class)."
    )
    queue_name: LabelValue | None = Field(
        default=None, description="Kueue LocalQueue; sets the `kueue.x-k8s.io/queue-name` label on the Job."
    )
    pod_overrides: PodOverrides | None = Field(
        default=None,
        description=(
            "Tenant-safe pod settings: scheduling, extra env, extra configMap/emptyDir/PVC/projected volumes, "
            "labels and annotations. Anything else (securityContext, serviceAccountName, host namespaces, "
            "images, commands, hostPath or secret volumes, ...) is rejected."
        ),
    )
