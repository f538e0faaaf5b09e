"""What each kind means, one class per kind in one registry, used by the operator (controllers) and by
`kubeforge run` (runner), so the two cannot drift (they did: `ThresholdsFailed` on the cluster but
`ThresholdsNotMet` locally, details nested on one side and spread on the other).

A `Kind` says: which API model and typed status model it has, its main condition, its stage and
references (from the API model: `stage()`, `references()` with the spec field of each), the children that
run the stage (the pure builders), whether the stage reports live progress, and `lift`: result + resolved
inputs + the URI the stage was told to write → status fields (validated by the kind's status model) plus
the per-generation conditions that follow from the result. The main condition, Succeeded, stays with the
caller because only it knows the Job's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError

from .api.v1alpha1 import (
    Dataset,
    DatasetStatus,
    Evaluation,
    EvaluationStatus,
    KubeResource,
    ModelDeployment,
    ModelDeploymentStatus,
    RewardModel,
    RLHFJob,
    TrainingJob,
)
from .api.v1alpha1 import conditions as c
from .api.v1alpha1.status import CommonStatus, WorkloadStatus
from .builders import dataset, evaluation, modeldeployment, rewardmodel, rlhfjob, trainingjob
from .manifests import explain
from .settings import OperatorSettings
from .stage import ResolvedInput, StageResult

Condition = tuple[str, str, str, str]  # (type, status, reason, message)


@dataclass
class Lifted:
    """Status fields and conditions derived from one stage result; `problem` when the result does not fit
    the kind's status schema (the caller fails the generation with it instead of writing a status the API
    server would refuse)."""

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)
    problem: str = ""


def lineage_of(inputs: dict[str, ResolvedInput]) -> list[dict[str, Any]]:
    """Lineage entries for resolved inputs (sorted by key for stable status)."""
    return [inputs[key].lineage().to_wire() for key in sorted(inputs)]


def _wire(value: Any) -> Any:
    if hasattr(value, "to_wire"):
        return value.to_wire()
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def passed_condition(result: StageResult | None) -> Condition:
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


class Kind:
    """The meaning of one kind. Subclasses set the class attributes and override `_fields`."""

    name: ClassVar[str]
    model: ClassVar[type[KubeResource]]
    status: ClassVar[type[CommonStatus]]
    main: ClassVar[str] = c.SUCCEEDED
    bounded: ClassVar[bool] = True  # one Job per generation, then finished (not ModelDeployment)
    reports_progress: ClassVar[bool] = False  # the stage serves live progress gauges while it runs

    def children(
        self, resource: Any, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
    ) -> list[dict[str, Any]]:
        """The stage's Job and what it mounts, in creation order (the kind's pure builder)."""
        raise NotImplementedError

    def lift(self, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> Lifted:
        """The status a successful stage leads to, validated by the kind's status model."""
        out = Lifted()
        self._fields(out, result, out_uri, inputs)
        try:
            out.fields = self.status.model_validate(out.fields).to_wire()
        except ValidationError as exc:
            out.problem = "the stage's result does not fit status: " + "; ".join(explain(exc))
        return out

    def _fields(self, out: Lifted, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> None:
        raise NotImplementedError

    def failed_conditions(self) -> list[Condition]:
        """Conditions besides the main one when the stage failed."""
        return []


def _details(out: Lifted, result: StageResult | None) -> None:
    for key, value in ((result.details if result is not None else None) or {}).items():
        if key != "passed":
            out.fields[key] = value


class DatasetKind(Kind):
    name = "Dataset"
    model = Dataset
    status = DatasetStatus
    def children(
        self, resource: Any, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
    ) -> list[dict[str, Any]]:
        return dataset.get_children(resource, inputs, settings, revision)

    def _fields(self, out: Lifted, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> None:
        artifact = result.artifact if result is not None else None
        out.fields["artifactUri"] = artifact.uri if artifact is not None else out_uri
        out.fields["artifact"] = artifact.to_wire() if artifact is not None else {"uri": out_uri}
        if artifact is not None and artifact.digest:
            out.fields["digest"] = artifact.digest
        _details(out, result)
        if result is not None and result.lineage:
            out.fields["lineage"] = _wire(result.lineage)
        elif inputs:
            out.fields["lineage"] = lineage_of(inputs)


class ProducerKind(Kind):
    """TrainingJob, RewardModel, RLHFJob: artifact, lineage, metrics, progress, checkpoints, details."""

    status = WorkloadStatus
    reports_progress = True

    def _fields(self, out: Lifted, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> None:
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
        _details(out, result)


class TrainingJobKind(ProducerKind):
    name = "TrainingJob"
    model = TrainingJob
    def children(
        self, resource: Any, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
    ) -> list[dict[str, Any]]:
        return trainingjob.get_children(resource, inputs, settings, revision)


class RewardModelKind(ProducerKind):
    name = "RewardModel"
    model = RewardModel
    def children(
        self, resource: Any, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
    ) -> list[dict[str, Any]]:
        return rewardmodel.get_children(resource, inputs, settings, revision)


class RLHFJobKind(ProducerKind):
    name = "RLHFJob"
    model = RLHFJob
    def children(
        self, resource: Any, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
    ) -> list[dict[str, Any]]:
        return rlhfjob.get_children(resource, inputs, settings, revision)


class EvaluationKind(Kind):
    """Metrics and the Passed condition (the gate a ModelDeployment waits for)."""

    name = "Evaluation"
    model = Evaluation
    status = EvaluationStatus
    def children(
        self, resource: Any, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
    ) -> list[dict[str, Any]]:
        return evaluation.get_children(resource, inputs, settings, revision)

    def _fields(self, out: Lifted, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> None:
        out.fields["lineage"] = lineage_of(inputs)
        out.conditions.append(passed_condition(result))
        if result is None:
            return
        if result.metrics:
            out.fields["metrics"] = result.metrics
        _details(out, result)

    def failed_conditions(self) -> list[Condition]:
        return [(c.PASSED, "False", c.EVALUATION_FAILED, "the evaluation did not complete")]


class ModelDeploymentKind(Kind):
    """Serving: a conversion Job per run, then Triton (controllers/modeldeployment.py); Ready, not Succeeded."""

    name = "ModelDeployment"
    model = ModelDeployment
    status = ModelDeploymentStatus
    main = c.READY
    bounded = False
    def children(
        self, resource: Any, inputs: dict[str, ResolvedInput], settings: OperatorSettings, revision: int = 0
    ) -> list[dict[str, Any]]:
        return modeldeployment.get_conversion_children(resource, inputs, settings, revision)

    def _fields(self, out: Lifted, result: StageResult | None, out_uri: str, inputs: dict[str, ResolvedInput]) -> None:
        """The conversion's outcome (serving fields are the serving reconciler's); the lineage only from the
        stage, since the operator records the inputs it resolved (with the held-out split) when it starts
        the conversion and a result-less Job (KWOK) must not overwrite them."""
        details = dict((result.details if result is not None else None) or {})
        repo = str(details.pop("modelRepository", None) or out_uri)
        out.fields["modelRepository"] = repo
        if result is not None and result.artifact is not None and result.artifact.digest:
            out.fields["modelDigest"] = result.artifact.digest
        for key in ("conversion", "quantization"):
            value = details.pop(key, None)
            if isinstance(value, dict):
                out.fields[key] = value
        if result is not None and result.lineage:
            out.fields["lineage"] = _wire(result.lineage)
        if details:
            out.fields["details"] = details
        out.conditions.append((c.MODEL_EXPORTED, "True", c.EXPORTED, f"model repository at {repo}"))


REGISTRY: dict[str, Kind] = {
    k.name: k
    for k in (DatasetKind(), TrainingJobKind(), RewardModelKind(), RLHFJobKind(), EvaluationKind(),
              ModelDeploymentKind())
}
BOUNDED = tuple(name for name, k in REGISTRY.items() if k.bounded)


def of(kind: str) -> Kind:
    """The meaning of a kind (KeyError names the kinds there are)."""
    try:
        return REGISTRY[kind]
    except KeyError:
        raise KeyError(f"{kind} is not a Kubeforge kind ({', '.join(REGISTRY)})") from None
