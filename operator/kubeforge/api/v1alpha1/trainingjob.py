"""TrainingJob: pretraining, supervised fine-tuning and classification/regression fine-tuning (full or PEFT)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import KubeModel, cel
from .dataset import DatasetTask
from .kuberesource import PROGRESS_COLUMNS, KubeResource, bounded_printer_columns
from .references import DatasetInput, SpecReference, dataset_reference, model_reference, rerun_on_input_change_field
from .resources import Resources
from .sources import ModelSource, TokenizerSource
from .status import WorkloadStatus
from .storage import StorageLocation
from .training import (
    QLORA_NEEDS_GPU,
    TP_NEEDS_FULL_TRAINING,
    Checkpointing,
    Distributed,
    Hyperparameters,
    Peft,
    Precision,
    check_qlora_gpu,
    check_tp_full_training,
)

TrainingMethod = Literal["pretrain", "sft", "classification", "regression"]

# Dataset tasks each method trains on (the operator's DependenciesReady and `kubeforge validate` check
# the pair: a Dataset's task is only known once both objects are seen, which CEL cannot do).
METHOD_DATASET_TASKS: dict[str, tuple[DatasetTask, ...]] = {
    "pretrain": (DatasetTask.TEXT, DatasetTask.CLASSIFICATION, DatasetTask.REGRESSION, DatasetTask.CHAT),
    "sft": (DatasetTask.TEXT, DatasetTask.INSTRUCTION, DatasetTask.CHAT),
    "classification": (DatasetTask.CLASSIFICATION,),
    "regression": (DatasetTask.REGRESSION,),
}
# The method that fits a Dataset task, for the hint in a mismatch message.
TASK_METHOD: dict[DatasetTask, str] = {
    DatasetTask.TEXT: "pretrain",
    DatasetTask.INSTRUCTION: "sft",
    DatasetTask.CHAT: "sft",
    DatasetTask.CLASSIFICATION: "classification",
    DatasetTask.REGRESSION: "regression",
    DatasetTask.PREFERENCE: "a RewardModel or RLHFJob (algorithm dpo)",
    DatasetTask.MULTIPLE_CHOICE: "an Evaluation (taskType multiple-choice)",
    DatasetTask.QUESTION_ANSWER: "sft on an instruction Dataset derived from it, or an Evaluation",
}


def dataset_task_problem(method: str, dataset: str, task: str, chat_template: bool = False) -> str | None:
    """Why a TrainingJob with `method` cannot train on Dataset `dataset` of `task` (None when it can).

    pretrain reads `text`, which a chat Dataset only has when it renders messages (processing.chatTemplate).
    """
    try:
        dtask = DatasetTask(task)
    except ValueError:
        return None  # an unknown task is the Dataset's own validation error
    allowed = METHOD_DATASET_TASKS.get(method, ())
    if dtask in allowed and not (method == "pretrain" and dtask == DatasetTask.CHAT and not chat_template):
        return None
    names = "/".join(t.value for t in allowed)
    if method == "pretrain":
        names = "text (or classification/regression text, or chat with processing.chatTemplate)"
    fix = TASK_METHOD.get(dtask, "another method")
    hint = f"use method: {fix}" if fix in METHOD_DATASET_TASKS else f"use {fix}"
    if dtask in allowed:  # pretrain on chat messages that are not rendered into text
        hint = "set the Dataset's processing.chatTemplate, or use method: sft"
    return f"method {method} needs a {names} Dataset; Dataset {dataset} has task {dtask.value}: {hint}"


class TrainingJobSpec(KubeModel):
    """Desired state of a TrainingJob."""

    method: TrainingMethod = Field(
        description=(
            "`pretrain` (causal LM on text), `sft` (supervised fine-tuning on text/instruction/chat data), "
            "`classification` (a sequence-classification head over the Dataset's labels; classification Dataset) "
            "or `regression` (one regression output trained with MSE; regression Dataset)."
        ),
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "method is immutable")]},
    )
    model: ModelSource = Field(description="Base model, another job's output, or an architecture to initialise.")
    tokenizer: TokenizerSource = Field(default_factory=TokenizerSource, description="Tokenizer to use or train.")
    dataset: DatasetInput = Field(description="Training data.")
    peft: Peft = Field(default_factory=Peft, description="Parameter-efficient fine-tuning.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimiser settings.")
    precision: Precision = Field(default=Precision.BF16, description="fp32, fp16 or bf16.")
    distributed: Distributed = Field(default_factory=Distributed, description="Parallelism across GPUs/nodes.")
    resources: Resources = Field(default_factory=Resources, description="Compute per pod.")
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="Checkpoints and resume.")
    output: StorageLocation = Field(default_factory=StorageLocation, description="Where the model is written.")
    rerun_on_input_change: bool = rerun_on_input_change_field()
    backoff_limit: int = Field(default=2, ge=0, le=20, description="Pod retries before the Job fails.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                QLORA_NEEDS_GPU,
                TP_NEEDS_FULL_TRAINING,
                cel(
                    "!has(self.model.architecture) || !has(self.peft) || self.peft.method == 'none'",
                    "a model initialised from architecture trains fully: set peft.method none",
                    ".peft.method",
                ),
                cel(
                    "!has(self.model.architecture) || self.method == 'pretrain'",
                    "model.architecture (from scratch) needs method pretrain",
                    ".method",
                ),
                cel(
                    "!has(self.tokenizer) || !has(self.tokenizer.trainVocabSize) || "
                    "(self.method != 'classification' && self.method != 'regression')",
                    "tokenizer.trainVocabSize (a new tokenizer) needs method pretrain or sft: a classifier keeps its "
                    "base model's tokenizer",
                    ".tokenizer.trainVocabSize",
                ),
            ]
        }
    )

    @model_validator(mode="after")
    def _rules(self) -> TrainingJobSpec:
        check_qlora_gpu(self.peft, self.resources)
        check_tp_full_training(self.peft, self.distributed)
        if self.model.architecture is not None and self.peft.method != "none":
            raise ValueError("a model initialised from architecture trains fully: set peft.method none")
        if self.model.architecture is not None and self.method != "pretrain":
            raise ValueError("model.architecture (from scratch) needs method pretrain")
        if self.tokenizer.train_vocab_size is not None and self.method in ("classification", "regression"):
            raise ValueError(
                "tokenizer.trainVocabSize (a new tokenizer) needs method pretrain or sft: a classifier keeps its "
                "base model's tokenizer"
            )
        return self


class TrainingJob(KubeResource):
    """Pretraining, supervised fine-tuning, or classification/regression fine-tuning of a model."""

    KIND: ClassVar[str] = "TrainingJob"
    PLURAL: ClassVar[str] = "trainingjobs"
    SHORT_NAMES: ClassVar[list[str]] = ["kftj"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = bounded_printer_columns(
        [
            {"name": "Method", "type": "string", "jsonPath": ".spec.method"},
            {"name": "PEFT", "type": "string", "jsonPath": ".spec.peft.method", "priority": 1},
            *PROGRESS_COLUMNS,
        ]
    )

    kind: Literal["TrainingJob"] = Field(default="TrainingJob", description="TrainingJob.")
    spec: TrainingJobSpec = Field(description="Desired state.")
    status: WorkloadStatus | None = Field(default=None, description="Observed state (set by the operator).")


    def stage(self) -> str:
        return str(self.spec.method)

    def references(self) -> list[SpecReference]:
        return [*dataset_reference(self.spec.dataset, "dataset", "spec.dataset"),
                *model_reference(self.spec.model, "model", "spec.model")]

    def uri_inputs(self) -> dict[str, str]:
        return {"model": self.spec.model.uri} if self.spec.model.uri is not None else {}
