"""RLHFJob: policy optimisation against a reward model or reward functions (TRL)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import MAX_URI, KubeModel, Name, cel
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


class RLAlgorithm(StrEnum):
    """Policy-optimisation algorithm. `ppo` is reserved: TRL dropped PPOTrainer in 1.13."""

    GRPO = "grpo"
    RLOO = "rloo"
    ONLINE_DPO = "online-dpo"
    DPO = "dpo"


ONLINE = {RLAlgorithm.GRPO, RLAlgorithm.RLOO, RLAlgorithm.ONLINE_DPO}
TP_NEEDS_DPO = (
    "distributed.tensorParallel > 1 needs algorithm dpo: the online algorithms sample different completions on "
    "the ranks of one tensor-parallel group, which DeepSpeed AutoTP refuses (it needs identical inputs there); "
    "use tensorParallel 1 and shard the policy with zeroStage 3"
)


class RewardFunction(KubeModel):
    """A built-in programmatic reward."""

    name: Literal["length", "format", "keyword", "exact-match", "no-repetition"] = Field(
        description=(
            "`length` (closeness to targetLength), `format` (matches pattern), `keyword` (contains any of keywords), "
            "`exact-match` (equals the dataset's `completion`), `no-repetition` (penalises repeated n-grams)."
        )
    )
    weight: float = Field(default=1.0, description="Weight of this reward in the sum.")
    target_length: int | None = Field(default=None, ge=1, description="Target completion length in characters.")
    pattern: str | None = Field(
        default=None, max_length=1024, description="Regex the completion should match (`format`)."
    )
    keywords: list[str] | None = Field(default=None, max_length=256, description="Words to reward (`keyword`).")


class RewardModelRef(KubeModel):
    """A RewardModel in the same namespace (or `namespace`)."""

    name: Name = Field(description="RewardModel name.")
    namespace: Name | None = Field(default=None, description="Namespace; defaults to the referrer's.")


class Reward(KubeModel):
    """Reward signal: a reward model and/or reward functions."""

    model: RewardModelRef | None = Field(default=None, description="Score completions with this RewardModel.")
    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URI,
        description="Score with a reward model at this location instead.",
    )
    functions: list[RewardFunction] | None = Field(
        default=None, max_length=16, description="Programmatic rewards added to the model's score."
    )
    model_weight: float = Field(default=1.0, description="Weight of the reward model's score in the sum.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.model) && has(self.uri))", "set reward.model or reward.uri, not both", ".uri")
            ]
        }
    )

    @model_validator(mode="after")
    def _one_model(self) -> Reward:
        if self.model is not None and self.uri is not None:
            raise ValueError("set reward.model or reward.uri, not both")
        return self

    @property
    def has_signal(self) -> bool:
        """True when any reward source is configured."""
        return self.model is not None or self.uri is not None or bool(self.functions)


class Generation(KubeModel):
    """Sampling used to produce completions during online RL."""

    num_generations: int = Field(default=4, ge=2, le=256, description="Completions sampled per prompt (group size).")
    max_completion_length: int = Field(default=64, ge=1, le=65536, description="Longest completion in tokens.")
    temperature: float = Field(default=1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")


class RLHFJobSpec(KubeModel):
    """Desired state of an RLHFJob."""

    algorithm: RLAlgorithm = Field(
        description="grpo, rloo, online-dpo (online, need a reward) or dpo (offline, needs preference data).",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "algorithm is immutable")]},
    )
    policy: ModelSource = Field(description="Starting policy: a TrainingJob's output or a model uri.")
    tokenizer: TokenizerSource = Field(default_factory=TokenizerSource, description="Tokenizer (default: policy's).")
    reward: Reward | None = Field(default=None, description="Reward for online algorithms.")
    dataset: DatasetInput = Field(description="Prompt Dataset (online) or preference Dataset (dpo).")
    kl_coefficient: float = Field(
        default=0.05, ge=0, le=100, description="KL penalty to the reference policy (TRL `beta`)."
    )
    generation: Generation = Field(default_factory=Generation, description="Sampling settings (online).")
    peft: Peft = Field(default_factory=Peft, description="Parameter-efficient fine-tuning.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimiser settings.")
    precision: Precision = Field(default=Precision.BF16, description="fp32, fp16 or bf16.")
    distributed: Distributed = Field(default_factory=Distributed, description="Parallelism across GPUs/nodes.")
    resources: Resources = Field(default_factory=Resources, description="Compute per pod.")
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="Checkpoints and resume.")
    output: StorageLocation = Field(default_factory=StorageLocation, description="Where the policy is written.")
    rerun_on_input_change: bool = rerun_on_input_change_field()
    backoff_limit: int = Field(default=2, ge=0, le=20, description="Pod retries before the Job fails.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                QLORA_NEEDS_GPU,
                TP_NEEDS_FULL_TRAINING,
                cel(
                    "self.algorithm == 'dpo' || (has(self.reward) && (has(self.reward.model) || "
                    "has(self.reward.uri) || (has(self.reward.functions) && size(self.reward.functions) > 0)))",
                    "online algorithms (grpo, rloo, online-dpo) need reward.model, reward.uri or reward.functions",
                    ".reward",
                ),
                cel(
                    "self.algorithm != 'dpo' || !has(self.reward)",
                    "dpo learns from preference pairs: remove reward",
                    ".reward",
                ),
                cel(
                    "!has(self.policy.architecture)",
                    "the policy must be a trained model: set policy.uri or policy.ref",
                    ".policy",
                ),
                cel(
                    "self.algorithm == 'dpo' || !has(self.distributed) || self.distributed.tensorParallel == 1",
                    TP_NEEDS_DPO,
                    ".distributed.tensorParallel",
                ),
            ]
        }
    )

    @model_validator(mode="after")
    def _rules(self) -> RLHFJobSpec:
        check_qlora_gpu(self.peft, self.resources)
        check_tp_full_training(self.peft, self.distributed)
        if self.algorithm in ONLINE and (self.reward is None or not self.reward.has_signal):
            raise ValueError(
                "online algorithms (grpo, rloo, online-dpo) need reward.model, reward.uri or reward.functions"
            )
        if self.algorithm == RLAlgorithm.DPO and self.reward is not None:
            raise ValueError("dpo learns from preference pairs: remove reward")
        if self.policy.architecture is not None:
            raise ValueError("the policy must be a trained model: set policy.uri or policy.ref")
        if self.algorithm in ONLINE and self.distributed.tensor_parallel > 1:
            raise ValueError(TP_NEEDS_DPO)
        return self


class RLHFJob(KubeResource):
    """Reinforcement learning from (human or AI) feedback."""

    KIND: ClassVar[str] = "RLHFJob"
    PLURAL: ClassVar[str] = "rlhfjobs"
    SHORT_NAMES: ClassVar[list[str]] = ["kfrl"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = bounded_printer_columns(
        [
            {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm"},
            *PROGRESS_COLUMNS,
            {"name": "Reward", "type": "number", "jsonPath": ".status.metrics.reward", "priority": 1},
        ]
    )

    kind: Literal["RLHFJob"] = Field(default="RLHFJob", description="RLHFJob.")
    spec: RLHFJobSpec = Field(description="Desired state.")
    status: WorkloadStatus | None = Field(default=None, description="Observed state (set by the operator).")


    def stage(self) -> str:
        return "rlhf"

    def references(self) -> list[SpecReference]:
        out = [*dataset_reference(self.spec.dataset, "dataset", "spec.dataset"),
               *model_reference(self.spec.policy, "model", "spec.policy")]
        reward = self.spec.reward
        if reward is not None and reward.model is not None:
            out.append(SpecReference("rewardModel", "RewardModel", reward.model.name, reward.model.namespace,
                                     "spec.reward.model"))
        return out

    def uri_inputs(self) -> dict[str, str]:
        out = {"model": self.spec.policy.uri} if self.spec.policy.uri is not None else {}
        if self.spec.reward is not None and self.spec.reward.uri is not None:
            out["rewardModel"] = self.spec.reward.uri
        return out
