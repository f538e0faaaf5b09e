"""TrainingJob: pretraining and supervised fine-tuning (full or PEFT)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    PROGRESS_COLUMNS,
    QLORA_NEEDS_GPU,
    Checkpointing,
    DatasetInput,
    Distributed,
    Hyperparameters,
    KubeModel,
    KubeResource,
    ModelSource,
    Peft,
    Precision,
    Resources,
    StorageLocation,
    TokenizerSource,
    WorkloadStatus,
    bounded_printer_columns,
    cel,
    check_qlora_gpu,
)


class TrainingJobSpec(KubeModel):
    """Desired state of a TrainingJob."""

    method: Literal["pretrain", "sft"] = Field(
        description="`pretrain` (causal LM on text) or `sft` (supervised fine-tuning on instruction/chat data).",
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
    backoff_limit: int = Field(default=2, ge=0, le=20, description="Pod retries before the Job fails.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                QLORA_NEEDS_GPU,
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
            ]
        }
    )

    @model_validator(mode="after")
    def _rules(self) -> TrainingJobSpec:
        check_qlora_gpu(self.peft, self.resources)
        if self.model.architecture is not None and self.peft.method != "none":
            raise ValueError("a model initialised from architecture trains fully: set peft.method none")
        if self.model.architecture is not None and self.method != "pretrain":
            raise ValueError("model.architecture (from scratch) needs method pretrain")
        return self


class TrainingJob(KubeResource):
    """Pretraining or supervised fine-tuning of a language model."""

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
