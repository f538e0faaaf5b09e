"""kopf registrations of the bounded kinds (one Job per generation), in one loop over the kind registry.

What each kind means lives below the controllers, in `kinds.py` (shared with `kubeforge run`): its model,
stage, references, children (the pure builders) and status. A kind here is only wiring: a pass over the
shared level-triggered reconcile (stages.py), and the watch-event handler that keeps the cache and the
dependency index and feeds the work queue.
"""

from __future__ import annotations

from typing import Any

import kopf

from .. import kinds
from ..api.v1alpha1 import GROUP, VERSION
from . import deps, passes, stages


def register(meaning: kinds.Kind) -> None:
    """Wire one bounded kind into kopf and the work queue."""
    plural = meaning.model.PLURAL

    async def reconcile(body: dict[str, Any], patch: kopf.Patch) -> None:
        await stages.reconcile_stage(body, patch, meaning=meaning)

    async def track(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        """Metrics gauge, body cache, dependency index; queue a pass when the object is new or changed, and
        its dependents when its Succeeded/Passed moved."""
        await deps.on_object_event(body, type, meaning.main, memo)

    passes.register(meaning.name, reconcile)
    kopf.on.event(GROUP, VERSION, plural, id="track")(track)


for _meaning in kinds.REGISTRY.values():
    if _meaning.bounded:
        register(_meaning)
