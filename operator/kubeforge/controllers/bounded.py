"""kopf registrations of the five bounded kinds (one Job per generation), in one loop.

What each kind means lives below the controllers: its children in `builders/<kind>.py`, its status in
`kinds.py` (shared with `kubeforge run`). A kind here is only wiring: a pass over the shared
level-triggered reconcile (stages.py), the dependency index, and the watch-event handler that feeds the
work queue.
"""

from __future__ import annotations

from typing import Any

import kopf

from ..api.v1alpha1 import GROUP, KINDS, VERSION, conditions
from ..builders import dataset, evaluation, rewardmodel, rlhfjob, trainingjob
from . import common, deps, stages

CHILDREN: dict[str, stages.Builder] = {
    "Dataset": dataset.get_children,
    "TrainingJob": trainingjob.get_children,
    "RewardModel": rewardmodel.get_children,
    "RLHFJob": rlhfjob.get_children,
    "Evaluation": evaluation.get_children,
}


def register(kind: str, builder: stages.Builder) -> None:
    """Wire one bounded kind into kopf and the work queue."""
    plural = KINDS[kind].PLURAL

    async def reconcile(body: dict[str, Any], patch: kopf.Patch) -> None:
        await stages.reconcile_stage(body, patch, builder=builder, lift=stages.lift_workload)

    async def track(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        """Metrics gauge, body cache; queue a pass when the object is new or changed, and its dependents
        when its Succeeded/Passed moved."""
        await deps.on_object_event(body, type, conditions.SUCCEEDED, kwargs)

    common.register(kind, reconcile)
    kopf.index(GROUP, VERSION, plural, id=plural + deps.INDEX_SUFFIX)(deps.index_dependencies)
    kopf.on.event(GROUP, VERSION, plural, id="track")(track)


for _kind, _builder in CHILDREN.items():
    register(_kind, _builder)
