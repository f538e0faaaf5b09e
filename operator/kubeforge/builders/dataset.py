"""Dataset → ConfigMap + Job running the `prepare` stage."""

from __future__ import annotations

from ..api.v1alpha1 import Dataset
from ..api.v1alpha1.common import Resources
from ..settings import OperatorSettings
from ..stage import ResolvedInput, StageConfig, build_stage_config
from .common import Manifest, get_stage_workload

# Dataset has no resources/backoffLimit fields: data preparation is CPU work with the defaults.
DATASET_RESOURCES = Resources()
DATASET_BACKOFF_LIMIT = 2


def get_stage_config(
    resource: Dataset, inputs: dict[str, ResolvedInput], settings: OperatorSettings
) -> StageConfig:
    """The shared stage config for this Dataset."""
    return build_stage_config(resource, inputs, settings.store_root)


def get_children(
    resource: Dataset, inputs: dict[str, ResolvedInput], settings: OperatorSettings
) -> list[Manifest]:
    """Everything the `prepare` stage needs, in creation order."""
    return get_stage_workload(
        resource,
        get_stage_config(resource, inputs, settings),
        settings,
        image=settings.trainer_image,
        resources=DATASET_RESOURCES,
        backoff_limit=DATASET_BACKOFF_LIMIT,
        output=resource.spec.output,
    )
