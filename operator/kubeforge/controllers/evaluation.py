"""Evaluation controller: thin kopf handlers over the shared level-triggered reconcile."""

from __future__ import annotations

from typing import Any

import kopf

from ..api.v1alpha1 import GROUP, VERSION, KubeResource
from ..builders import evaluation as builders
from ..stage import ResolvedInput, StageResult
from . import common

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

@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Create/update/resume: one reconcile pass (idempotent, so resume after restart is safe)."""
    await common.reconcile_stage(body, patch, builder=builders.get_children, lift=lift_evaluation)


@kopf.timer(
    GROUP, VERSION, PLURAL, id="poll", interval=common.settings().poll_interval,
    initial_delay=common.settings().poll_interval, when=common.unsettled,
)
async def poll(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """While dependencies or the Job are not finished, look again (stops once Succeeded is final)."""
    await common.reconcile_stage(body, patch, builder=builders.get_children, lift=lift_evaluation)


@kopf.on.event(GROUP, VERSION, PLURAL, id="track")
def track(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the kubeforge_resources gauge current."""
    common.track(body, type, common.SUCCEEDED)
