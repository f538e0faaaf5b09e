"""Dataset controller: thin kopf handlers over the shared level-triggered reconcile."""

from __future__ import annotations

from typing import Any

import kopf

from ..api.v1alpha1 import GROUP, VERSION, KubeResource
from ..builders import dataset as builders
from ..stage import ResolvedInput, StageResult
from . import common, deps, stages

PLURAL = "datasets"


def lift_dataset(
    w: common.StatusWriter, resource: KubeResource, result: StageResult | None, out_uri: str,
    inputs: dict[str, ResolvedInput],
) -> None:
    """Dataset status: artifactUri, digest, counts/removed/statistics from the stage details."""
    artifact = result.artifact if result is not None else None
    w.fields["artifactUri"] = artifact.uri if artifact is not None else out_uri
    if artifact is not None and artifact.digest:
        w.fields["digest"] = artifact.digest
    for key, value in ((result.details if result is not None else None) or {}).items():
        w.fields[key] = value
    if result is not None and result.lineage:
        w.fields["lineage"] = [entry.to_wire() for entry in result.lineage]
    elif inputs:
        w.fields["lineage"] = list(common.iter_lineage(inputs))


async def _pass(body: dict[str, Any], patch: kopf.Patch) -> None:
    await stages.reconcile_stage(body, patch, builder=builders.get_children, lift=lift_dataset)


common.register("Dataset", _pass)


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
