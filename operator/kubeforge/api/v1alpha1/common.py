"""Types shared by all six kinds: references, storage, resources, status and conditions.

Every field carries a description because the CRDs are generated from these models and
`kubectl explain` shows exactly these strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "kubeforge.io"
VERSION = "v1alpha1"
API_VERSION: Literal["kubeforge.io/v1alpha1"] = "kubeforge.io/v1alpha1"

DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

Name = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123)]


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry; kept next to the pydantic check that mirrors it."""
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


class KubeModel(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """Serialise the way the API server stores it (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ProducerKind(StrEnum):
    """Kinds whose status carries a model artifact."""

    TRAINING_JOB = "TrainingJob"
    REWARD_MODEL = "RewardModel"
    RLHF_JOB = "RLHFJob"


class ObjectReference(KubeModel):
    """A typed reference to another Kubeforge object."""

    kind: str = Field(description="Kind of the referenced object, e.g. `TrainingJob`.")
    name: Name = Field(description="Name of the referenced object.")
    namespace: Name | None = Field(
        default=None, description="Namespace of the referenced object; defaults to the referrer's namespace."
    )


class ModelRef(KubeModel):
    """A reference to a Kubeforge kind that produces a model."""

    kind: ProducerKind = Field(description="Producing kind: TrainingJob, RewardModel or RLHFJob.")
    name: Name = Field(description="Name of the producing object.")
    namespace: Name | None = Field(
        default=None, description="Namespace of the producing object; defaults to the referrer's namespace."
    )


class DatasetInput(KubeModel):
    """Which Dataset (and which of its splits) a stage reads."""

    name: Name = Field(description="Name of the Dataset in the same namespace (or `namespace`).")
    namespace: Name | None = Field(default=None, description="Namespace of the Dataset; defaults to the referrer's.")
    split: Literal["train", "validation", "test"] = Field(
        default="train", description="Split used as the main input (training data, or evaluation data)."
    )
    eval_split: Literal["train", "validation", "test"] | None = Field(
        default="validation",
        description="Split used for periodic evaluation during training; unset disables it.",
    )


class ArchitectureConfig(KubeModel):
    """A decoder architecture to initialise from scratch (pretraining without a base model)."""

    family: Literal["llama", "gpt2"] = Field(default="llama", description="Model family (transformers config).")
    hidden_size: int = Field(default=64, ge=8, le=65536, description="Width of the hidden states.")
    num_layers: int = Field(default=2, ge=1, le=512, description="Number of transformer blocks.")
    num_heads: int = Field(default=4, ge=1, le=512, description="Attention heads per block.")
    intermediate_size: int | None = Field(
        default=None, ge=8, description="MLP width; defaults to 4x hidden size (gpt2) or 8/3x (llama)."
    )
    vocab_size: int | None = Field(
        default=None, ge=64, description="Vocabulary size; defaults to the tokenizer's size."
    )
    max_position_embeddings: int = Field(default=512, ge=16, le=1048576, description="Longest sequence.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.hiddenSize % self.numHeads == 0",
                    "hiddenSize must be divisible by numHeads",
                    ".hiddenSize",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ArchitectureConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hiddenSize must be divisible by numHeads")
        return self


class ModelSource(KubeModel):
    """Where a model comes from: exactly one of `uri`, `ref`, `architecture`."""

    uri: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Model location: a Hugging Face id (`org/name` or `hf://org/name`), `s3://bucket/prefix`, "
            "`pvc://claim/path` or `file:///path` to an HF-format directory."
        ),
    )
    ref: ModelRef | None = Field(default=None, description="Use the model artifact produced by another object.")
    architecture: ArchitectureConfig | None = Field(
        default=None, description="Initialise a new model from this architecture (training from scratch)."
    )
    revision: str | None = Field(default=None, description="Hub revision or commit when `uri` is a hub id.")
    trust_remote_code: bool = Field(default=False, description="Allow custom model code from the model repository.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.uri), has(self.ref), has(self.architecture)].filter(x, x).size() == 1",
                    "exactly one of uri, ref or architecture must be set",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if sum(x is not None for x in (self.uri, self.ref, self.architecture)) != 1:
            raise ValueError("exactly one of uri, ref or architecture must be set")
        return self


class TokenizerSource(KubeModel):
    """Tokenizer: an existing one, or one trained on the input Dataset."""

    uri: str | None = Field(
        default=None, description="Tokenizer location (same forms as model uri); defaults to the model's own."
    )
    train_vocab_size: int | None = Field(
        default=None,
        ge=64,
        le=1048576,
        description="Train a byte-level BPE tokenizer of this size on the training split (from-scratch runs).",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.uri) && has(self.trainVocabSize))", "set either uri or trainVocabSize, not both")
            ]
        }
    )

    @model_validator(mode="after")
    def _one(self) -> TokenizerSource:
        if self.uri is not None and self.train_vocab_size is not None:
            raise ValueError("set either uri or trainVocabSize, not both")
        return self


class SecretKeyRef(KubeModel):
    """A Secret holding S3 credentials."""

    name: Name = Field(description="Secret name in the object's namespace.")
    access_key_id_key: str = Field(default="AWS_ACCESS_KEY_ID", description="Key holding the access key id.")
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY", description="Key holding the secret access key."
    )


class StorageLocation(KubeModel):
    """Where an artifact is written."""

    uri: str | None = Field(
        default=None,
        pattern=r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|s3://[^/]+(/.*)?|file:///.*)$",
        description=(
            "Artifact location: `pvc://claim/sub/path`, `s3://bucket/prefix` or `file:///path`. "
            "Defaults to the operator's artifact store under `<namespace>/<kind>/<name>/`."
        ),
    )
    s3_secret: SecretKeyRef | None = Field(default=None, description="Credentials for `s3://` locations.")
    s3_endpoint: str | None = Field(default=None, description="Custom S3 endpoint URL (MinIO, Ceph, ...).")


class Toleration(KubeModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key to tolerate; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class Resources(KubeModel):
    """Compute for the stage's pods."""

    gpu: int = Field(default=0, ge=0, le=64, description="GPUs per pod (`nvidia.com/gpu`).")
    gpu_type: str | None = Field(
        default=None,
        description="GPU product to schedule on (matched against the `nvidia.com/gpu.product` node label).",
    )
    cpu: str = Field(default="1", pattern=QUANTITY, description="CPU request (Kubernetes quantity).")
    memory: str = Field(default="4Gi", pattern=QUANTITY, description="Memory request (Kubernetes quantity).")
    node_selector: dict[str, str] | None = Field(default=None, description="Node labels the pods must match.")
    tolerations: list[Toleration] | None = Field(default=None, description="Taints the pods tolerate.")
    priority_class_name: str | None = Field(default=None, description="PriorityClass of the pods.")
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue; sets the `kueue.x-k8s.io/queue-name` label on the Job."
    )
    pod_overrides: dict[str, Any] | None = Field(
        default=None,
        description="Free-form fields merged into the pod spec (strategic merge of a partial core/v1 PodSpec).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


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
    tensor_parallel: int = Field(default=1, ge=1, le=64, description="Tensor-parallel degree.")
    pipeline_parallel: int = Field(default=1, ge=1, le=64, description="Pipeline-parallel degree.")

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
        default=None, description="Initialise prompt-tuning embeddings from this text (else random)."
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


class Checkpointing(KubeModel):
    """Checkpoints for preemption and retries."""

    interval_steps: int = Field(default=100, ge=1, description="Save a checkpoint every N optimiser steps.")
    keep: int = Field(default=2, ge=1, le=100, description="Newest checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the newest checkpoint when the pod restarts.")


class ConditionStatus(StrEnum):
    """Condition truth value."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A status condition in the Kubernetes API convention."""

    type: str = Field(description="Condition type, e.g. `Succeeded`, `Ready`, `DependenciesReady`.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable detail.")
    observed_generation: int | None = Field(default=None, description="Generation the condition was set for.")
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time of the last status change.")


def now_rfc3339() -> str:
    """Timestamp format used by Kubernetes conditions."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Artifact(KubeModel):
    """A produced artifact."""

    uri: str = Field(description="Where the artifact lives.")
    digest: str | None = Field(default=None, description="Content digest (`sha256:...`) of the artifact.")
    size_bytes: int | None = Field(default=None, description="Total size in bytes.")


class LineageEntry(KubeModel):
    """One input that produced an artifact."""

    kind: str = Field(description="Kind of the input (Dataset, TrainingJob, ..., or `External`).")
    name: str = Field(description="Object name, or the URI for external inputs.")
    uri: str | None = Field(default=None, description="Artifact location of the input.")
    digest: str | None = Field(default=None, description="Content digest of the input when produced.")


class Progress(KubeModel):
    """Live progress reported by the stage."""

    step: int | None = Field(default=None, description="Current optimiser step.")
    total_steps: int | None = Field(default=None, description="Planned optimiser steps.")
    epoch: float | None = Field(default=None, description="Current (fractional) epoch.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds left.")
    percent: str | None = Field(default=None, description="Human-readable progress, e.g. `42%`.")


class CommonStatus(KubeModel):
    """Status fields every kind shares."""

    model_config = ConfigDict(extra="allow")

    observed_generation: int | None = Field(default=None, description="Generation the status describes.")
    conditions: list[Condition] | None = Field(default=None, description="Latest observations of state.")
    start_time: str | None = Field(default=None, description="When the workload started.")
    completion_time: str | None = Field(default=None, description="When the workload finished.")
    job_name: str | None = Field(default=None, description="Name of the batch Job running the stage.")


class WorkloadStatus(CommonStatus):
    """Status of kinds that produce a model artifact."""

    progress: Progress | None = Field(default=None, description="Live training progress.")
    artifact: Artifact | None = Field(default=None, description="Produced model artifact.")
    checkpoints: list[str] | None = Field(default=None, description="Checkpoint locations, newest last.")
    lineage: list[LineageEntry] | None = Field(default=None, description="Inputs that produced the artifact.")
    metrics: dict[str, float] | None = Field(default=None, description="Final metrics reported by the stage.")


class KubeResource(KubeModel):
    """Top-level object: apiVersion, kind, metadata, spec, status."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAMES: ClassVar[list[str]] = []
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = []
    TOP_VALIDATIONS: ClassVar[list[JsonDict]] = []

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["kubeforge.io/v1alpha1"] = Field(
        default=API_VERSION, description="API version: `kubeforge.io/v1alpha1`."
    )
    kind: str = Field(description="Kind of the object.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")

    @model_validator(mode="after")
    def _kind_matches(self) -> KubeResource:
        if self.KIND and self.kind != self.KIND:
            raise ValueError(f"kind must be {self.KIND}")
        return self

    @property
    def name(self) -> str:
        """metadata.name (empty when unset)."""
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        """metadata.namespace, defaulting to `default`."""
        return str(self.metadata.get("namespace") or "default")


def bounded_printer_columns(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Printer columns for kinds that run to completion (kubectl get)."""
    cols: list[dict[str, Any]] = [
        {
            "name": "Succeeded",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Succeeded")].status',
        },
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Succeeded")].reason',
        },
    ]
    cols.extend(extra or [])
    cols.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return cols


PROGRESS_COLUMNS: list[dict[str, Any]] = [
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "priority": 0},
]
