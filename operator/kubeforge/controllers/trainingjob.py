"""TrainingJob controller: thin kopf handlers over the shared level-triggered reconcile."""

from __future__ import annotations

from typing import Any

import kopf

from ..api.v1alpha1 import GROUP, VERSION
from ..builders import trainingjob as builders
from . import common

PLURAL = "trainingjobs"

@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Create/update/resume: one reconcile pass (idempotent, so resume after restart is safe)."""
    await common.reconcile_stage(body, patch, builder=builders.get_children, lift=common.lift_workload)


@kopf.timer(
    GROUP, VERSION, PLURAL, id="poll", interval=common.settings().poll_interval,
    initial_delay=common.settings().poll_interval, when=common.unsettled,
)
async def poll(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """While dependencies or the Job are not finished, look again (stops once Succeeded is final)."""
    await common.reconcile_stage(body, patch, builder=builders.get_children, lift=common.lift_workload)


@kopf.on.event(GROUP, VERSION, PLURAL, id="track")
def track(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the kubeforge_resources gauge current."""
    common.track(body, type, common.SUCCEEDED)
