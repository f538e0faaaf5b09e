"""Evaluation: metrics on a held-out split, with thresholds that gate promotion."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    CommonStatus,
    DatasetInput,
    KubeModel,
    KubeResource,
    ModelSource,
    Resources,
    StorageLocation,
    TokenizerSource,
    bounded_printer_columns,
    cel,
)


class EvalTask(StrEnum):
    """How the model is exercised."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    GENERATION = "generation"
    LANGUAGE_MODELING = "language-modeling"
    MULTIPLE_CHOICE = "multiple-choice"
    NUMERIC_ANSWER = "numeric-answer"


class Metric(StrEnum):
    """Metrics the evaluate stage computes (names match status.metrics keys)."""

    ACCURACY = "accuracy"
    PRECISION = "precision"
    RECALL = "recall"
    F1 = "f1"
    MSE = "mse"
    RMSE = "rmse"
    MAE = "mae"
    BLEU = "bleu"
    NIST = "nist"
    ROUGE1 = "rouge1"
    ROUGE2 = "rouge2"
    ROUGEL = "rougeL"
    EXACT_MATCH = "exact_match"
    PERPLEXITY = "perplexity"


# Which metrics make sense for each task.
TASK_METRICS: dict[EvalTask, set[Metric]] = {
    EvalTask.CLASSIFICATION: {Metric.ACCURACY, Metric.PRECISION, Metric.RECALL, Metric.F1},
    EvalTask.REGRESSION: {Metric.MSE, Metric.RMSE, Metric.MAE},
    EvalTask.GENERATION: {
        Metric.BLEU, Metric.NIST, Metric.ROUGE1, Metric.ROUGE2, Metric.ROUGEL, Metric.EXACT_MATCH,
    },
    EvalTask.LANGUAGE_MODELING: {Metric.PERPLEXITY},
    EvalTask.MULTIPLE_CHOICE: {Metric.ACCURACY},
    EvalTask.NUMERIC_ANSWER: {Metric.ACCURACY, Metric.EXACT_MATCH},
}


def _task_metric_rule() -> str:
    clauses = [
        f"(self.taskType == '{task.value}' && self.metrics.all(m, m in {sorted(m.value for m in allowed)}))"
        for task, allowed in TASK_METRICS.items()
    ]
    return " || ".join(clauses)


class Threshold(KubeModel):
    """A pass/fail bound on one metric."""

    metric: Metric = Field(description="Metric the bound applies to (must be listed in `metrics`).")
    min: float | None = Field(default=None, description="Pass only if metric >= min.")
    max: float | None = Field(default=None, description="Pass only if metric <= max.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel("has(self.min) || has(self.max)", "a threshold needs min or max")]
        }
    )

    @model_validator(mode="after")
    def _bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs min or max")
        return self

    def passes(self, value: float) -> bool:
        """Whether `value` is inside the bound."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class GenerationSettings(KubeModel):
    """Decoding used for generation-based metrics."""

    max_new_tokens: int = Field(default=64, ge=1, le=65536, description="Tokens to generate per sample.")
    temperature: float = Field(default=0.0, ge=0, le=10, description="0 = greedy decoding.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")


class EvaluationSpec(KubeModel):
    """Desired state of an Evaluation."""

    model: ModelSource = Field(description="Model under test: a producing object's output or a uri.")
    tokenizer: TokenizerSource = Field(default_factory=TokenizerSource, description="Tokenizer (default: model's).")
    dataset: DatasetInput = Field(description="Evaluation data (set `split`, usually `test`).")
    task_type: EvalTask = Field(
        description=(
            "classification, regression, generation, language-modeling, multiple-choice (MMLU style: "
            "`question`, `choices`, `answer`) or numeric-answer (GSM8K style: `question`, `answer`)."
        ),
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "taskType is immutable")]},
    )
    metrics: list[Metric] = Field(min_length=1, max_length=16, description="Metrics to compute.")
    average: Literal["macro", "micro", "weighted", "binary"] = Field(
        default="macro", description="Averaging for precision/recall/F1."
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings, description="Decoding settings.")
    thresholds: list[Threshold] | None = Field(
        default=None, max_length=16, description="Bounds that must all hold for `Passed=True`."
    )
    max_samples: int | None = Field(default=None, ge=1, description="Evaluate at most this many records.")
    resources: Resources = Field(default_factory=Resources, description="Compute per pod.")
    output: StorageLocation = Field(default_factory=StorageLocation, description="Where the report is written.")
    backoff_limit: int = Field(default=1, ge=0, le=20, description="Pod retries before the Job fails.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.thresholds) || self.thresholds.all(t, t.metric in self.metrics)",
                    "every thresholds[].metric must also be listed in metrics",
                    ".thresholds",
                ),
                cel(_task_metric_rule(), "metrics must suit taskType (e.g. mse for regression, bleu for generation)",
                    ".metrics"),
            ]
        }
    )

    @model_validator(mode="after")
    def _rules(self) -> EvaluationSpec:
        bad = [m.value for m in self.metrics if m not in TASK_METRICS[self.task_type]]
        if bad:
            allowed = sorted(m.value for m in TASK_METRICS[self.task_type])
            raise ValueError(
                f"metrics must suit taskType (e.g. mse for regression, bleu for generation): {bad} are not "
                f"allowed for {self.task_type.value}; allowed: {allowed}"
            )
        for t in self.thresholds or []:
            if t.metric not in self.metrics:
                raise ValueError(f"thresholds metric {t.metric.value} must also be listed in metrics")
        return self


class EvaluationStatus(CommonStatus):
    """Observed state of an Evaluation."""

    metrics: dict[str, float] | None = Field(default=None, description="Computed metric values.")
    sample_count: int | None = Field(default=None, description="Records evaluated.")
    report_uri: str | None = Field(default=None, description="Where the JSON report and per-sample results are.")
    failed_thresholds: list[str] | None = Field(default=None, description="Thresholds that did not hold.")


class Evaluation(KubeResource):
    """Evaluation of a model with pass/fail thresholds."""

    KIND: ClassVar[str] = "Evaluation"
    PLURAL: ClassVar[str] = "evaluations"
    SHORT_NAMES: ClassVar[list[str]] = ["kfev"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = bounded_printer_columns(
        [
            {"name": "Passed", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Passed")].status'},
            {"name": "Task", "type": "string", "jsonPath": ".spec.taskType"},
            {"name": "Samples", "type": "integer", "jsonPath": ".status.sampleCount", "priority": 1},
        ]
    )

    kind: Literal["Evaluation"] = Field(default="Evaluation", description="Evaluation.")
    spec: EvaluationSpec = Field(description="Desired state.")
    status: EvaluationStatus | None = Field(default=None, description="Observed state (set by the operator).")
