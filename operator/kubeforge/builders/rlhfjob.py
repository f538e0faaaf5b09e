"""RLHFJob → Job (Indexed Job + headless Service when distributed) running the `rlhf` stage."""

from __future__ import annotations

from ..api.v1alpha1 import RLHFJob
from ..deepspeed import get_deepspeed_config
from ..settings import OperatorSettings
from ..stage import ResolvedInput, StageConfig, build_stage_config, run_name
from .naming import Manifest, generation
from .workloads import get_stage_workload


def get_stage_config(
    resource: RLHFJob, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
) -> StageConfig:
    """The shared stage config for this RLHFJob."""
    return build_stage_config(resource, inputs, settings.store_root, run=run_name(generation(resource), revision))


def get_children(
    resource: RLHFJob, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
) -> list[Manifest]:
    """Everything the stage needs, in creation order; DeepSpeed JSON beside the config when requested."""
    spec = resource.spec
    deepspeed = get_deepspeed_config(spec) if spec.distributed.strategy == "deepspeed" else None
    return get_stage_workload(
        resource,
        get_stage_config(resource, inputs, settings, revision),
        settings,
        image=settings.trainer_image,
        resources=spec.resources,
        backoff_limit=spec.backoff_limit,
        output=spec.output,
        revision=revision,
        distributed=spec.distributed,
        deepspeed=deepspeed,
    )
