"""How the training kinds train: precision, hyperparameters, parallelism (`Distributed`), PEFT and
checkpointing, with the cross-field rules (CEL and their Python twins) that tie them together."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .base import KubeModel, cel
from .resources import Resources


class Precision(StrEnum):
    """Numeric precision of training."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Hyperparameters(KubeModel):
    """Optimiser and schedule settings (Hugging Face TrainingArguments names)."""

    learning_rate: float = Field(default=5e-5, gt=0, le=1, description="Peak learning rate.")
    epochs: float = Field(default=1.0, gt=0, le=1000, description="Passes over the training split.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimiser steps.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024, description="Micro-batches per step.")
    warmup_ratio: float = Field(default=0.0, ge=0, le=1, description="Fraction of steps of linear warm-up.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="Learning-rate schedule."
    )
    max_length: int = Field(default=512, ge=8, le=1048576, description="Longest tokenised sequence.")
    seed: int = Field(default=42, ge=0, description="Random seed.")
    logging_steps: int = Field(default=10, ge=1, description="Report loss/progress every N steps.")
    eval_steps: int | None = Field(default=None, ge=1, description="Evaluate every N steps (unset: per epoch).")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for activation memory.")


# Model-parallel rules of Distributed, in the order its validator mirrors them.
TP_RULES = [
    cel(
        "self.pipelineParallel == 1",
        "pipelineParallel must be 1: the Hugging Face Trainer and TRL have no pipeline-parallel training loop; "
        "split a large model with tensorParallel (DeepSpeed AutoTP) or shard it with zeroStage 3",
        ".pipelineParallel",
    ),
    cel(
        "self.tensorParallel == 1 || self.strategy == 'deepspeed'",
        "tensorParallel > 1 needs strategy deepspeed (DeepSpeed AutoTP): set strategy deepspeed, or tensorParallel 1",
        ".tensorParallel",
    ),
    cel(
        "self.tensorParallel == 1 || self.zeroStage <= 2",
        "tensorParallel > 1 needs zeroStage 0-2 (transformers cannot load a model for ZeRO-3 under AutoTP): "
        "set zeroStage 2, or tensorParallel 1 to shard with ZeRO-3 alone",
        ".zeroStage",
    ),
    cel(
        "(self.nodes * self.processesPerNode) % self.tensorParallel == 0",
        "tensorParallel must divide the worker processes nodes*processesPerNode (each tensor-parallel group is "
        "tensorParallel ranks): change processesPerNode or tensorParallel",
        ".tensorParallel",
    ),
]


class Distributed(KubeModel):
    """Data/model parallelism across GPUs and nodes."""

    strategy: Literal["none", "ddp", "deepspeed"] = Field(
        default="none", description="`none` (single process), `ddp` (torchrun) or `deepspeed` (ZeRO)."
    )
    nodes: int = Field(default=1, ge=1, le=1024, description="Pods (nodes); >1 renders an Indexed Job.")
    processes_per_node: int = Field(
        default=1, ge=1, le=64, description="Worker processes per pod; normally equal to GPUs per pod."
    )
    zero_stage: int = Field(default=2, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    offload_optimizer: bool = Field(default=False, description="ZeRO-Offload the optimiser state to CPU.")
    offload_params: bool = Field(default=False, description="ZeRO-3 parameter offload to CPU.")
    tensor_parallel: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Tensor-parallel degree (DeepSpeed AutoTP): each layer is split over this many consecutive ranks, "
            "data parallelism runs over nodes*processesPerNode/tensorParallel. Needs strategy deepspeed, "
            "zeroStage <= 2, full training (peft none or freeze) and at most the model's key-value heads."
        ),
    )
    pipeline_parallel: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Must be 1: the Hugging Face Trainer and TRL have no pipeline-parallel training loop.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.strategy == 'deepspeed' || (!self.offloadOptimizer && !self.offloadParams)",
                    "offloadOptimizer/offloadParams need strategy deepspeed",
                ),
                cel(
                    "!self.offloadParams || self.zeroStage == 3",
                    "offloadParams needs zeroStage 3",
                    ".offloadParams",
                ),
                cel(
                    "self.strategy != 'none' || (self.nodes == 1 && self.processesPerNode == 1)",
                    "nodes>1 or processesPerNode>1 needs strategy ddp or deepspeed",
                    ".strategy",
                ),
                *TP_RULES,
            ]
        }
    )

    @model_validator(mode="after")
    def _consistent(self) -> Distributed:
        if self.strategy != "deepspeed" and (self.offload_optimizer or self.offload_params):
            raise ValueError("offloadOptimizer/offloadParams need strategy deepspeed")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offloadParams needs zeroStage 3")
        if self.strategy == "none" and (self.nodes > 1 or self.processes_per_node > 1):
            raise ValueError("nodes>1 or processesPerNode>1 needs strategy ddp or deepspeed")
        tp = self.tensor_parallel
        for broken, rule in zip(
            (
                self.pipeline_parallel != 1,
                tp > 1 and self.strategy != "deepspeed",
                tp > 1 and self.zero_stage > 2,
                self.world_size % tp != 0,
            ),
            TP_RULES,
            strict=True,
        ):
            if broken:
                raise ValueError(str(rule["message"]))
        return self

    @property
    def world_size(self) -> int:
        """Total worker processes across all pods."""
        return self.nodes * self.processes_per_node


class PeftMethod(StrEnum):
    """Parameter-efficient fine-tuning methods (peft library), or full/frozen training."""

    NONE = "none"
    LORA = "lora"
    QLORA = "qlora"
    PREFIX = "prefix"
    PROMPT = "prompt"
    IA3 = "ia3"
    FREEZE = "freeze"


class Peft(KubeModel):
    """Which parameters train."""

    method: PeftMethod = Field(
        default=PeftMethod.NONE, description="none (full), lora, qlora, prefix, prompt, ia3, freeze."
    )
    r: int = Field(default=8, ge=1, le=1024, description="LoRA/QLoRA rank.")
    alpha: int = Field(default=16, ge=1, le=4096, description="LoRA/QLoRA scaling alpha.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA/QLoRA dropout.")
    target_modules: list[str] | None = Field(
        default=None, description="Modules to adapt (LoRA/IA3); default `all-linear`."
    )
    num_virtual_tokens: int = Field(default=8, ge=1, le=1024, description="Virtual tokens (prefix/prompt tuning).")
    prompt_init_text: str | None = Field(
        default=None, max_length=65536, description="Initialise prompt-tuning embeddings from this text (else random)."
    )
    freeze_layers: int = Field(default=0, ge=0, le=1024, description="Freeze embeddings and the first N blocks.")
    quant_bits: Literal[4, 8] = Field(default=4, description="Weight bits of the frozen base under QLoRA.")
    merge: bool = Field(default=False, description="Also save the adapter merged into the base (LoRA/IA3).")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.method == 'freeze' || self.freezeLayers == 0",
                    "freezeLayers is only used with method freeze",
                    ".freezeLayers",
                ),
                cel(
                    "self.method != 'freeze' || self.freezeLayers > 0",
                    "method freeze needs freezeLayers > 0",
                    ".freezeLayers",
                ),
                cel(
                    "!has(self.promptInitText) || self.method == 'prompt'",
                    "promptInitText is only used with method prompt",
                    ".promptInitText",
                ),
            ]
        }
    )

    @model_validator(mode="after")
    def _consistent(self) -> Peft:
        if self.method != PeftMethod.FREEZE and self.freeze_layers:
            raise ValueError("freezeLayers is only used with method freeze")
        if self.method == PeftMethod.FREEZE and not self.freeze_layers:
            raise ValueError("method freeze needs freezeLayers > 0")
        if self.prompt_init_text is not None and self.method != PeftMethod.PROMPT:
            raise ValueError("promptInitText is only used with method prompt")
        return self


QLORA_NEEDS_GPU = cel(
    "!has(self.peft) || self.peft.method != 'qlora' || (has(self.resources) && self.resources.gpu > 0)",
    "peft.method qlora needs a GPU: set resources.gpu >= 1 (bitsandbytes 4/8-bit kernels are CUDA-only)",
    ".peft.method",
)


def check_qlora_gpu(peft: Peft | None, resources: Resources | None) -> None:
    """Python twin of QLORA_NEEDS_GPU."""
    if peft is not None and peft.method == PeftMethod.QLORA and (resources is None or resources.gpu < 1):
        raise ValueError(str(QLORA_NEEDS_GPU["message"]))


TP_NEEDS_FULL_TRAINING = cel(
    "!has(self.distributed) || self.distributed.tensorParallel == 1 || !has(self.peft) || "
    "self.peft.method == 'none' || self.peft.method == 'freeze'",
    "distributed.tensorParallel > 1 needs peft.method none or freeze: DeepSpeed AutoTP cannot split the layers "
    "PEFT wraps (LoRA/IA3/prefix/prompt adapters); use tensorParallel 1, or train fully",
    ".peft.method",
)


def check_tp_full_training(peft: Peft, dist: Distributed) -> None:
    """Python twin of TP_NEEDS_FULL_TRAINING."""
    if dist.tensor_parallel > 1 and peft.method not in (PeftMethod.NONE, PeftMethod.FREEZE):
        raise ValueError(str(TP_NEEDS_FULL_TRAINING["message"]))


class Checkpointing(KubeModel):
    """Checkpoints for preemption and retries."""

    interval_steps: int = Field(default=100, ge=1, description="Save a checkpoint every N optimiser steps.")
    keep: int = Field(default=2, ge=1, le=100, description="Newest checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the newest checkpoint when the pod restarts.")
