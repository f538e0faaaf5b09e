"""Evaluation controller: thin kopf handlers over the shared level-triggered reconcile."""

from __future__ import annotations

from typing import Any

import kopf

from ..api.v1alpha1 import GROUP, VERSION, KubeResource
from ..builders import evaluation as builders
from ..stage import ResolvedInput, StageResult
from . import common, deps, stages

PLURAL = "evaluations"


def lift_evaluation(
    w: common.StatusWriter, resource: KubeResource, result: StageResult | None, out_uri: str,
    inputs: dict[str, ResolvedInput],
) -> None:
    """Evaluation status: metrics, sampleCount, reportUri, failedThresholds and the Passed condition."""
    w.fields["lineage"] = list(common.iter_lineage(inputs))
    if result is None:
        w.set(common.PASSED, "Unknown", "NoResult", "the evaluate stage left no result (termination message)")
        return
    details = dict(result.details or {})
    if result.metrics:
        w.fields["metrics"] = result.metrics
    for key, value in details.items():
        if key != "passed":
            w.fields[key] = value
    failed = [str(f) for f in details.get("failedThresholds") or []]
    passed = details.get("passed")
    if passed is None:
        passed = not failed
    if passed:
        w.set(common.PASSED, "True", "ThresholdsMet", "all thresholds hold")
    else:
        w.set(common.PASSED, "False", "ThresholdsFailed", "failed thresholds: " + (", ".join(failed) or "unknown"))


async def _pass(body: dict[str, Any], patch: kopf.Patch) -> None:
    await stages.reconcile_stage(body, patch, builder=builders.get_children, lift=lift_evaluation)


common.register("Evaluation", _pass)


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
