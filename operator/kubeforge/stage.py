"""The contract between the control plane and the stage containers.

One code path renders what a stage runs: the operator puts `StageConfig` into the pod (a downwardAPI file) and
`stage_command()` into the pod; the local runner writes the same config to a file and runs the same
command as a subprocess. Stages write `StageResult` to `resultPath` (and a compact copy to the
termination message) and `Progress` JSON to `progressPath` while they run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from .api.v1alpha1 import KINDS, KubeResource
from .api.v1alpha1.base import KubeModel
from .api.v1alpha1.status import Artifact, LineageEntry, Progress

TRAINER_MODULE = "kubeforge_trainer"
SERVING_MODULE = "kubeforge_serving"
CONFIG_MOUNT = "/etc/kubeforge"
CONFIG_FILE = "config.yaml"
PVC_ROOT_ENV = "KUBEFORGE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MAX = 4096
METRICS_PORT = 9400


def stage_name(resource: KubeResource) -> str:
    """Which stage runs a resource: prepare, pretrain, sft, classification, regression, reward, rlhf, evaluate
    or convert (the kind's API model says)."""
    return resource.stage()


def stage_module(stage: str) -> str:
    """Python package whose `__main__` runs the stage."""
    return SERVING_MODULE if stage == "convert" else TRAINER_MODULE


class ResolvedInput(KubeModel):
    """A reference resolved to a concrete artifact."""

    kind: str = Field(description="Kind of the producer (or `External` for a plain URI).")
    name: str = Field(description="Producer name (or the URI).")
    uri: str = Field(description="Artifact location.")
    digest: str | None = Field(default=None, description="Artifact digest when produced.")
    split: Literal["train", "validation", "test"] | None = Field(
        default=None,
        description="Dataset split the stage reads from this input (ModelDeployment `heldOut`); unset: its default.",
    )

    def lineage(self) -> LineageEntry:
        """This input as a lineage entry."""
        return LineageEntry(kind=self.kind, name=self.name, uri=self.uri, digest=self.digest)


class StageConfig(KubeModel):
    """Everything a stage needs: the owning object plus its resolved inputs and output places."""

    stage: str = Field(description="Stage to run.")
    resource: dict[str, Any] = Field(description="The owning object (apiVersion, kind, metadata, spec).")
    inputs: dict[str, ResolvedInput] = Field(
        default_factory=dict,
        description=(
            "Resolved references. Keys: `dataset` (main data), `parentDataset` (fromDataset), `model` "
            "(base/policy/model under test), `rewardModel`, `calibration`, `heldOut` (ModelDeployment parity text)."
        ),
    )
    output_uri: str = Field(description="Where the artifact is written.")
    checkpoint_uri: str | None = Field(default=None, description="Where checkpoints live (resume reads here).")
    progress_path: str | None = Field(
        default=None, description="URI of the file the stage rewrites with Progress JSON."
    )
    result_path: str | None = Field(
        default=None, description="URI of the file the stage writes StageResult JSON to."
    )
    metrics_port: int | None = Field(default=None, description="Port for the stage's Prometheus metrics (0: off).")

    def typed(self) -> KubeResource:
        """The owning object parsed with its kind's model (the single schema)."""
        return KINDS[self.resource["kind"]].model_validate(self.resource)

    def dump(self) -> str:
        """Deterministic JSON (the pod's config file and the local config file are byte-identical).

        JSON, not YAML: it is a YAML document too (the file keeps its `config.yaml` name), and the C encoder
        renders it in a fraction of the CPU PyYAML's pure-Python representer took on the operator's event
        loop (even with libyaml's emitter), per created Job. Compact: it travels in the Job's and each pod's
        annotations, so every watcher of Jobs and pods (the operator, the Job controller, the scheduler, the
        kubelet) decodes it on every event; indentation made it a third larger."""
        return json.dumps(self.to_wire(), sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> StageConfig:
        """Read a config file written by `dump` (or a YAML one written by hand or by an older operator)."""
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except ValueError:
            data = yaml.safe_load(text)
        return cls.model_validate(data)

    def digest(self) -> str:
        """Digest of what the stage will do (spec + inputs); the local runner skips unchanged work by it."""
        payload = {"spec": self.resource.get("spec"), "inputs": {k: v.to_wire() for k, v in self.inputs.items()}}
        return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class StageResult(KubeModel):
    """What a stage reports when it ends (lifted into the owner's status)."""

    succeeded: bool = Field(description="Whether the stage did its work.")
    reason: str = Field(default="Completed", description="CamelCase reason for the Succeeded condition.")
    message: str = Field(default="", description="One-line human summary or actionable error.")
    artifact: Artifact | None = Field(default=None, description="Produced artifact.")
    lineage: list[LineageEntry] | None = Field(default=None, description="Inputs and their digests.")
    metrics: dict[str, float] | None = Field(default=None, description="Final metrics.")
    progress: Progress | None = Field(default=None, description="Final progress.")
    checkpoints: list[str] | None = Field(default=None, description="Checkpoint locations, newest last.")
    details: dict[str, Any] | None = Field(
        default=None,
        description=(
            "Kind-specific status fields in status's camelCase names, e.g. Dataset `counts`, `removed`, "
            "`statistics`, `digest`; Evaluation `passed`, `failedThresholds`, `sampleCount`, `reportUri`, `variants`; "
            "ModelDeployment `modelRepository`, `conversion`."
        ),
    )

    def termination_message(self) -> str:
        """Compact JSON that fits Kubernetes' 4 KiB termination message."""
        text = json.dumps(self.to_wire(), separators=(",", ":"))
        if len(text) <= TERMINATION_MAX:
            return text
        slim = self.model_copy(update={"lineage": None, "checkpoints": None, "details": None})
        return json.dumps(slim.to_wire(), separators=(",", ":"))[:TERMINATION_MAX]


def local_path(uri: str) -> Path:
    """Map an artifact URI to a path inside the pod or on this machine.

    `file:///x` → `/x`; `pvc://claim/p` → `$KUBEFORGE_PVC_ROOT/claim/p` (where the operator mounts
    claims); plain paths pass through. `s3://` has no local path: stages use fsspec for it.
    """
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if uri.startswith("pvc://"):
        return Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)) / uri.removeprefix("pvc://")
    if "://" in uri:
        raise ValueError(f"{uri}: no local path for this scheme; use fsspec")
    return Path(uri)


def stage_command(config: StageConfig, config_path: str = f"{CONFIG_MOUNT}/{CONFIG_FILE}") -> list[str]:
    """The container command (and the local runner's subprocess argv)."""
    return ["python", "-m", stage_module(config.stage), config.stage, "--config", config_path]


class Dependency(KubeModel):
    """An object this resource needs before it can run."""

    key: str = Field(description="Input key in StageConfig.inputs (or `gate` for promotion gates).")
    kind: str = Field(description="Kind of the dependency.")
    name: str = Field(description="Name of the dependency.")
    namespace: str = Field(description="Namespace of the dependency.")
    field: str = Field(default="", description="The spec field that names it (`spec.dataset`, ...), for messages.")

    @property
    def ref(self) -> str:
        """`Kind/name` for messages."""
        return f"{self.kind}/{self.name}"


def dependencies(resource: KubeResource) -> list[Dependency]:
    """Every reference of `resource`, in a fixed order (inputs first, then gate Evaluations)."""
    return [Dependency(key=r.key, kind=r.kind, name=r.name, namespace=r.namespace or resource.namespace, field=r.field)
            for r in resource.references()]


def external_inputs(resource: KubeResource) -> dict[str, ResolvedInput]:
    """Inputs given as plain URIs (no producing object)."""
    return {key: ResolvedInput(kind="External", name=uri, uri=uri) for key, uri in resource.uri_inputs().items()}


def run_name(generation: int, revision: int = 0) -> str:
    """One run of an object: `g<generation>`, or `g<generation>-r<n>` for its n-th re-run after an input moved.

    The cluster names a run's Job and its output folder after it, so every run has its own artifact and the
    digests dependents recorded stay true (the object's status names the folder of its latest run).
    """
    return f"g{generation}" + (f"-r{revision}" if revision else "")


def output_uri(resource: KubeResource, store_root: str, run: str | None = None) -> str:
    """spec.output.uri, else `<store_root>/<namespace>/<kind>/<name>`; with `run`, that run's folder below it."""
    spec: Any = resource.spec  # type: ignore[attr-defined]
    explicit = spec.output.uri
    base = str(explicit) if explicit else (
        f"{store_root.rstrip('/')}/{resource.namespace}/{resource.kind.lower()}/{resource.name}"
    )
    return f"{base.rstrip('/')}/{run}" if run else base


def build_stage_config(
    resource: KubeResource,
    inputs: dict[str, ResolvedInput],
    store_root: str,
    metrics_port: int | None = METRICS_PORT,
    run: str | None = None,
) -> StageConfig:
    """The one renderer of stage configs, shared by the operator (one folder per `run`) and the local runner."""
    out = output_uri(resource, store_root, run)
    meta = {k: v for k, v in resource.metadata.items() if k in ("name", "namespace", "generation", "uid", "labels")}
    body = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": meta}
    body["spec"] = resource.spec.to_wire()  # type: ignore[attr-defined]
    stage = stage_name(resource)
    bounded_training = stage in ("pretrain", "sft", "classification", "regression", "reward", "rlhf")
    return StageConfig(
        stage=stage,
        resource=body,
        inputs={**external_inputs(resource), **inputs},
        output_uri=out,
        checkpoint_uri=f"{out}/checkpoints" if bounded_training else None,
        progress_path=f"{out}/progress.json",
        result_path=f"{out}/result.json",
        metrics_port=metrics_port,
    )
