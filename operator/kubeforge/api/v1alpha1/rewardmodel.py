"""RewardModel: a pairwise reward model trained on preference data."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import KubeModel, cel
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


class RewardModelSpec(KubeModel):
    """Desired state of a RewardModel."""

    model: ModelSource = Field(
        description="Base model (causal LM or encoder) given a scalar head; uri or another job's output."
    )
    tokenizer: TokenizerSource = Field(default_factory=TokenizerSource, description="Tokenizer (default: model's).")
    dataset: DatasetInput = Field(description="Preference Dataset (prompt/chosen/rejected).")
    peft: Peft = Field(default_factory=Peft, description="Parameter-efficient fine-tuning.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimiser settings.")
    precision: Precision = Field(default=Precision.BF16, description="fp32, fp16 or bf16.")
    center_rewards_coefficient: float | None = Field(
        default=None, ge=0, description="Penalty pulling mean reward to zero (TRL RewardConfig)."
    )
    distributed: Distributed = Field(
        default_factory=Distributed,
        description="Parallelism across GPUs/nodes (DDP or DeepSpeed ZeRO), as in TrainingJob.",
    )
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
                    "!has(self.model.architecture)",
                    "a reward model needs a pretrained base: set model.uri or model.ref",
                    ".model",
                ),
            ]
        }
    )

    @model_validator(mode="after")
    def _rules(self) -> RewardModelSpec:
        check_qlora_gpu(self.peft, self.resources)
        check_tp_full_training(self.peft, self.distributed)
        if self.model.architecture is not None:
            raise ValueError("a reward model needs a pretrained base: set model.uri or model.ref")
        return self


class RewardModel(KubeResource):
    """A pairwise reward model for RLHF."""

    KIND: ClassVar[str] = "RewardModel"
    PLURAL: ClassVar[str] = "rewardmodels"
    SHORT_NAMES: ClassVar[list[str]] = ["kfrm"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = bounded_printer_columns(
        [
            *PROGRESS_COLUMNS,
            {"name": "Accuracy", "type": "number", "jsonPath": ".status.metrics.pairwise_accuracy"},
        ]
    )

    kind: Literal["RewardModel"] = Field(default="RewardModel", description="RewardModel.")
    spec: RewardModelSpec = Field(description="Desired state.")
    status: WorkloadStatus | None = Field(default=None, description="Observed state (set by the operator).")


    def stage(self) -> str:
        return "reward"

    def references(self) -> list[SpecReference]:
        return [*dataset_reference(self.spec.dataset, "dataset", "spec.dataset"),
                *model_reference(self.spec.model, "model", "spec.model")]

    def uri_inputs(self) -> dict[str, str]:
        return {"model": self.spec.model.uri} if self.spec.model.uri is not None else {}
