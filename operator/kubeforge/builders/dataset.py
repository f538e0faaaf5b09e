"""Dataset → Job running the `prepare` stage."""

from __future__ import annotations

from ..api.v1alpha1 import Dataset
from ..api.v1alpha1.resources import Resources
from ..settings import OperatorSettings
from ..stage import ResolvedInput, StageConfig, build_stage_config, run_name
from .naming import Manifest, generation
from .workloads import get_stage_workload

# Dataset has no resources/backoffLimit fields: data preparation is CPU work with the defaults.
DATASET_RESOURCES = Resources()
DATASET_BACKOFF_LIMIT = 2


def get_stage_config(
    resource: Dataset, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
) -> StageConfig:
    """The shared stage config for this Dataset."""
    return build_stage_config(resource, inputs, settings.store_root, run=run_name(generation(resource), revision))


def get_children(
    resource: Dataset, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
) -> list[Manifest]:
    """Everything the `prepare` stage needs, in creation order."""
    return get_stage_workload(
        resource,
        get_stage_config(resource, inputs, settings, revision),
        settings,
        image=settings.trainer_image,
        resources=DATASET_RESOURCES,
        backoff_limit=DATASET_BACKOFF_LIMIT,
        output=resource.spec.output,
        revision=revision,
    )
