"""ModelDeployment: export, quantize and serve a model behind Triton, gated on Evaluations."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import MAX_URI, KubeModel, Name, cel
from .kuberesource import KubeResource
from .references import DatasetInput, SpecReference, dataset_reference, model_reference, rerun_on_input_change_field
from .resources import Resources
from .sources import ModelSource, TokenizerSource
from .status import CommonStatus, LineageEntry
from .storage import StorageLocation


class Gate(KubeModel):
    """Promotion gate: Evaluations that must have `Passed=True` before serving."""

    evaluations: list[Name] = Field(
        default_factory=list, max_length=32, description="Names of Evaluations (same namespace) that must pass."
    )
    require_same_model: bool = Field(
        default=True, description="Each Evaluation must have evaluated the model being deployed."
    )


class Export(KubeModel):
    """ONNX export."""

    opset: int = Field(default=18, ge=14, le=23, description="ONNX opset version.")
    kv_cache: bool = Field(default=False, description="Export with past key/value inputs for fast generation.")
    task: Literal["auto", "causal-lm", "sequence-classification"] = Field(
        default="auto", description="Model head to export; `auto` reads the model config."
    )
    max_logit_diff: float = Field(
        default=1e-3, gt=0, description="Fail the export when ONNX vs PyTorch max |logit diff| exceeds this."
    )


class Quantization(KubeModel):
    """Weight quantization of the exported model."""

    mode: Literal["none", "fp16", "int8-dynamic", "int8-static", "int8-weight-only"] = Field(
        default="none",
        description=(
            "none; fp16 (weights and compute); int8-dynamic (int8 weights per tensor, activations quantized on "
            "the fly: smallest and fastest on CPU, least accurate); int8-static (int8 weights per channel and "
            "activations with ranges calibrated on `calibration`); int8-weight-only (8-bit block-wise weights in "
            "onnxruntime MatMulNBits nodes, activations stay float: closest to fp32 of the int8 modes, slower than "
            "fp32 on CPU; needs onnxruntime >= 1.22 where the model is served, as in backend `python`)."
        ),
    )
    calibration: DatasetInput | None = Field(default=None, description="Calibration data for int8-static.")
    calibration_samples: int = Field(default=64, ge=1, le=100000, description="Calibration records used.")
    max_logit_diff: float | None = Field(
        default=None, gt=0, description="Fail quantization when max |logit diff| vs fp32 exceeds this."
    )
    min_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "Quality gate: fail the conversion (ModelExported=False, reason QuantizationQualityBelowGate) when "
            "the argmax agreement of the quantized vs the fp32 ONNX model (onnxruntime, next-token logits at "
            "every real position) is below this fraction. Measured on held-out text: the data of a spec.gate "
            "Evaluation, else the test (or validation) split of the Dataset the model was trained on; "
            "on random tokens when neither is reachable (status.quantization.source says which). "
            "0.95-0.99 is typical for int8; unset: report only."
        ),
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.mode != 'int8-static' || has(self.calibration)",
                    "quantization mode int8-static needs quantization.calibration (a Dataset)",
                    ".calibration",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _calibration(self) -> Quantization:
        if self.mode == "int8-static" and self.calibration is None:
            raise ValueError("quantization mode int8-static needs quantization.calibration (a Dataset)")
        return self


class DynamicBatching(KubeModel):
    """Triton dynamic batching."""

    enabled: bool = Field(default=True, description="Let Triton combine requests into batches.")
    max_queue_delay_microseconds: int = Field(default=1000, ge=0, le=10000000, description="Wait for a batch.")
    preferred_batch_sizes: list[int] | None = Field(default=None, max_length=16, description="Preferred sizes.")


class Triton(KubeModel):
    """Triton Inference Server settings."""

    max_batch_size: int = Field(default=8, ge=0, le=4096, description="Largest batch Triton forms (0 = off).")
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching, description="Dynamic batching.")
    instances: int = Field(default=1, ge=1, le=64, description="Model instances per server.")
    image: str | None = Field(
        default=None, min_length=1, max_length=MAX_URI, description="Triton image override (default: operator setting)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.dynamicBatching) || !has(self.dynamicBatching.preferredBatchSizes) || "
                    "self.dynamicBatching.preferredBatchSizes.all(s, s >= 1 && s <= self.maxBatchSize)",
                    "dynamicBatching.preferredBatchSizes must each be between 1 and maxBatchSize",
                    ".dynamicBatching.preferredBatchSizes",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _preferred(self) -> Triton:
        sizes = self.dynamic_batching.preferred_batch_sizes or []
        if any(not 1 <= b <= self.max_batch_size for b in sizes):
            raise ValueError("dynamicBatching.preferredBatchSizes must each be between 1 and maxBatchSize")
        return self


class Autoscaling(KubeModel):
    """HorizontalPodAutoscaler for the Triton Deployment."""

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas.")
    target_cpu_utilization: int = Field(default=70, ge=1, le=100, description="Average CPU target (percent).")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas", ".minReplicas")
            ]
        }
    )

    @model_validator(mode="after")
    def _order(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        return self


class Rollout(KubeModel):
    """How a new model version replaces the old one."""

    strategy: Literal["replace", "canary"] = Field(
        default="replace", description="`replace` (rolling update) or `canary` (new version beside the old)."
    )
    canary_weight: int = Field(
        default=20, ge=1, le=99, description="Share of traffic (percent, by replica weight) for the canary."
    )
    promote_after_seconds: int = Field(
        default=300, ge=0, description="Promote the canary after it has been Ready this long."
    )


class ModelDeploymentSpec(KubeModel):
    """Desired state of a ModelDeployment."""

    model: ModelSource = Field(description="Model to serve: a producing object's output or a uri.")
    tokenizer: TokenizerSource = Field(default_factory=TokenizerSource, description="Tokenizer shipped beside it.")
    gate: Gate = Field(default_factory=Gate, description="Evaluations that must pass first.")
    export: Export = Field(default_factory=Export, description="ONNX export.")
    quantization: Quantization = Field(default_factory=Quantization, description="Quantization.")
    backend: Literal["onnxruntime", "tensorrt", "python"] = Field(
        default="onnxruntime",
        description="Triton backend: onnxruntime, tensorrt (needs a GPU) or python (onnxruntime in model.py).",
    )
    triton: Triton = Field(default_factory=Triton, description="Triton server settings.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Triton replicas (ignored with autoscaling).")
    autoscaling: Autoscaling | None = Field(default=None, description="Enable an HPA with these bounds.")
    rollout: Rollout = Field(default_factory=Rollout, description="Rollout strategy.")
    resources: Resources = Field(default_factory=Resources, description="Compute per Triton pod.")
    conversion_resources: Resources = Field(
        default_factory=Resources, description="Compute for the export/quantize Job."
    )
    output: StorageLocation = Field(default_factory=StorageLocation, description="Model repository location.")
    rerun_on_input_change: bool = rerun_on_input_change_field()

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.backend != 'tensorrt' || (has(self.resources) && self.resources.gpu > 0)",
                    "backend tensorrt needs a GPU: set resources.gpu >= 1",
                    ".backend",
                ),
                cel(
                    "!has(self.model.architecture)",
                    "serve a trained model: set model.uri or model.ref",
                    ".model",
                ),
            ]
        }
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelDeploymentSpec:
        if self.backend == "tensorrt" and self.resources.gpu < 1:
            raise ValueError("backend tensorrt needs a GPU: set resources.gpu >= 1")
        if self.model.architecture is not None:
            raise ValueError("serve a trained model: set model.uri or model.ref")
        return self


class Endpoints(KubeModel):
    """Where the model is served."""

    http: str | None = Field(default=None, description="Triton HTTP/REST endpoint.")
    grpc: str | None = Field(default=None, description="Triton gRPC endpoint.")
    metrics: str | None = Field(default=None, description="Triton Prometheus metrics endpoint.")


class QuantizationQuality(KubeModel):
    """How close the quantized model is to fp32: quantized vs fp32 ONNX logits under onnxruntime."""

    mode: str = Field(description="spec.quantization.mode that was measured.")
    source: Literal["held-out", "random-tokens"] | None = Field(
        default=None,
        description="Parity inputs: `held-out` text of a Dataset split, or `random-tokens` when none was reachable.",
    )
    dataset: str | None = Field(default=None, description="Held-out data as `Dataset/name (split)`.")
    note: str | None = Field(default=None, description="Why random tokens were used, when they were.")
    positions: int | None = Field(default=None, description="Token positions (or sequences, for classifiers).")
    agreement: float | None = Field(default=None, description="Fraction of positions whose argmax matches fp32.")
    top5_overlap: float | None = Field(
        default=None, description="Mean share of fp32's top-5 classes also in the quantized model's top 5."
    )
    max_abs_logit_delta: float | None = Field(default=None, description="Largest |logit difference| vs fp32.")
    min_agreement: float | None = Field(default=None, description="spec.quantization.minAgreement applied, if any.")


class ModelDeploymentStatus(CommonStatus):
    """Observed state of a ModelDeployment."""

    endpoints: Endpoints | None = Field(default=None, description="Serving endpoints.")
    served_version: str | None = Field(default=None, description="Model version Triton serves (stable track).")
    canary_version: str | None = Field(default=None, description="Version on the canary track, if any.")
    ready_replicas: int | None = Field(default=None, description="Ready Triton replicas.")
    model_repository: str | None = Field(default=None, description="Triton model repository location.")
    model_digest: str | None = Field(default=None, description="Digest of the model being served.")
    conversion: dict[str, float] | None = Field(
        default=None, description="Conversion report: sizes, max logit diff, argmax agreement."
    )
    quantization: QuantizationQuality | None = Field(
        default=None, description="Quantized vs fp32 quality (argmax agreement, top-5 overlap, max |Δlogit|)."
    )
    lineage: list[LineageEntry] | None = Field(
        default=None, description="The model (and held-out data) the repository was converted from."
    )
    input_revision: int | None = Field(
        default=None, description="Re-runs of this generation after an input moved (names the run: g<gen>-r<n>)."
    )
    served_model_repository: str | None = Field(
        default=None, description="Repository of the version the stable track serves."
    )
    canary_ready_since: str | None = Field(
        default=None, description="When the canary's replicas were all ready (promotion counts from here)."
    )
    details: dict[str, Any] | None = Field(
        default=None,
        description="What the conversion reported besides the fields above (model name and version, the "
        "models in the repository, the report's URI).",
    )


class ModelDeployment(KubeResource):
    """A model served by Triton Inference Server."""

    KIND: ClassVar[str] = "ModelDeployment"
    PLURAL: ClassVar[str] = "modeldeployments"
    SHORT_NAMES: ClassVar[list[str]] = ["kfmd"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        {"name": "Version", "type": "string", "jsonPath": ".status.servedVersion"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Quantization", "type": "string", "jsonPath": ".spec.quantization.mode", "priority": 1},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoints.grpc", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    kind: Literal["ModelDeployment"] = Field(default="ModelDeployment", description="ModelDeployment.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state (set by the operator).")


    def stage(self) -> str:
        return "convert"

    def references(self) -> list[SpecReference]:
        out = model_reference(self.spec.model, "model", "spec.model")
        out += dataset_reference(self.spec.quantization.calibration, "calibration", "spec.quantization.calibration")
        out += [SpecReference("gate", "Evaluation", ev, None, f"spec.gate.evaluations[{i}]")
                for i, ev in enumerate(self.spec.gate.evaluations)]
        return out

    def uri_inputs(self) -> dict[str, str]:
        return {"model": self.spec.model.uri} if self.spec.model.uri is not None else {}
