"""What a stage's result means for each kind's status: one place, used by the operator (controllers) and
by `kubeforge run` (runner), so the two cannot drift (they did: `ThresholdsFailed` on the cluster but
`ThresholdsNotMet` locally, details nested on one side and spread on the other).

`lift` is pure: result + resolved inputs + the URI the stage was told to write → status fields plus the
per-generation conditions that follow from the result (the main condition, Succeeded, stays with the
caller because only it knows the Job's state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .api.v1alpha1 import conditions as c
from .stage import ResolvedInput, StageResult

BOUNDED = ("Dataset", "TrainingJob", "RewardModel", "RLHFJob", "Evaluation")


@dataclass
class Lifted:
    """Status fields and (type, status, reason, message) conditions derived from one stage result."""

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[tuple[str, str, str, str]] = field(default_factory=list)


def lineage_of(inputs: dict[str, ResolvedInput]) -> list[dict[str, Any]]:
    """Lineage entries for resolved inputs (sorted by key for stable status)."""
    return [inputs[key].lineage().to_wire() for key in sorted(inputs)]


def _wire(value: Any) -> Any:
    if hasattr(value, "to_wire"):
        return value.to_wire()
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def passed_condition(result: StageResult | None) -> tuple[str, str, str, str]:
    """Evaluation's Passed condition from its result."""
    if result is None:
        return c.PASSED, "Unknown", c.NO_RESULT, "the evaluate stage left no result (termination message)"
    details = result.details or {}
    failed = [str(f) for f in details.get("failedThresholds") or []]
    passed = details.get("passed")
    if passed is None:
        passed = not failed
    if passed:
        return c.PASSED, "True", c.THRESHOLDS_MET, "all thresholds hold"
    return c.PASSED, "False", c.THRESHOLDS_FAILED, "failed thresholds: " + (", ".join(failed) or "unknown")


def failed_conditions(kind: str) -> list[tuple[str, str, str, str]]:
    """Conditions besides the main one when the stage failed."""
    if kind == "Evaluation":
        return [(c.PASSED, "False", c.EVALUATION_FAILED, "the evaluation did not complete")]
    return []


def _dataset(out: Lifted, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> None:
    artifact = result.artifact if result is not None else None
    out.fields["artifactUri"] = artifact.uri if artifact is not None else out_uri
    out.fields["artifact"] = artifact.to_wire() if artifact is not None else {"uri": out_uri}
    if artifact is not None and artifact.digest:
        out.fields["digest"] = artifact.digest
    for key, value in ((result.details if result is not None else None) or {}).items():
        out.fields[key] = value
    if result is not None and result.lineage:
        out.fields["lineage"] = _wire(result.lineage)
    elif inputs:
        out.fields["lineage"] = lineage_of(inputs)


def _evaluation(out: Lifted, result: StageResult | None, inputs: dict[str, ResolvedInput]) -> None:
    out.fields["lineage"] = lineage_of(inputs)
    out.conditions.append(passed_condition(result))
    if result is None:
        return
    if result.metrics:
        out.fields["metrics"] = result.metrics
    for key, value in (result.details or {}).items():
        if key != "passed":
            out.fields[key] = value


def _producer(out: Lifted, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> None:
    """TrainingJob, RewardModel, RLHFJob: artifact, lineage, metrics, progress, checkpoints, details."""
    if result is not None and result.artifact is not None:
        out.fields["artifact"] = result.artifact.to_wire()
    else:
        # No result (e.g. KWOK runs no container): the artifact is where the stage was told to write.
        out.fields["artifact"] = {"uri": out_uri}
    if result is not None and result.lineage:
        out.fields["lineage"] = _wire(result.lineage)
    else:
        out.fields["lineage"] = lineage_of(inputs)
    if result is None:
        return
    if result.metrics:
        out.fields["metrics"] = result.metrics
    if result.progress is not None:
        out.fields["progress"] = result.progress.to_wire()
    if result.checkpoints:
        out.fields["checkpoints"] = result.checkpoints
    for key, value in (result.details or {}).items():
        if key != "passed":
            out.fields[key] = value


def lift(kind: str, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> Lifted:
    """The status a successful stage of a bounded kind leads to."""
    out = Lifted()
    if kind == "Dataset":
        _dataset(out, result, out_uri, inputs)
    elif kind == "Evaluation":
        _evaluation(out, result, inputs)
    elif kind in BOUNDED:
        _producer(out, result, out_uri, inputs)
    else:
        raise ValueError(f"{kind} is not a bounded kind")
    return out
