"""TrainingJob controller: thin kopf handlers over the shared level-triggered reconcile."""

from __future__ import annotations

from typing import Any

import kopf

from ..api.v1alpha1 import GROUP, VERSION
from ..builders import trainingjob as builders
from . import common, deps, stages

PLURAL = "trainingjobs"


async def _pass(body: dict[str, Any], patch: kopf.Patch) -> None:
    await stages.reconcile_stage(body, patch, builder=builders.get_children, lift=stages.lift_workload)


common.register("TrainingJob", _pass)


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def reconcile(body: kopf.Body, **_: Any) -> None:
    """Create/update/resume: one reconcile pass (idempotent, so resume after restart is safe).

    No timer (a kopf timer would add a finalizer): resync.py is the safety net.
    """
    await common.run_pass(body)


kopf.index(GROUP, VERSION, PLURAL, id=PLURAL + deps.INDEX_SUFFIX)(deps.index_dependencies)


@kopf.on.event(GROUP, VERSION, PLURAL, id="track")
async def track(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
    """Metrics gauge, body cache, and a wake-up for dependents when Succeeded/Passed moved."""
    await deps.on_object_event(body, type, common.SUCCEEDED, kwargs)
