"""References between Kubeforge objects: to a producing kind, a model, a Dataset, and the list a spec gives
(`SpecReference`) that the operator and `kubeforge run` resolve into inputs and dependencies."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import Field

from .base import KubeModel, Name

if TYPE_CHECKING:
    from .sources import ModelSource


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


def rerun_on_input_change_field() -> Any:
    """`spec.rerunOnInputChange`, the same on every kind that consumes another object's artifact."""
    return Field(
        default=True,
        description=(
            "Run again when an input this object already succeeded with is replaced by a new artifact (its "
            "producer re-ran: new spec, or its own inputs moved). `DependenciesReady` says which input moved "
            "(reason InputsChanged). false: keep the result; status.lineage still names the inputs it used."
        ),
    )


class SpecReference(NamedTuple):
    """One reference in a spec to another Kubeforge object: the input key the stage reads it under (or `gate`),
    the target, and the field that holds it (for messages that tell the user what to fix)."""

    key: str
    kind: str
    name: str
    namespace: str | None
    field: str


def model_reference(source: ModelSource, key: str, field: str) -> list[SpecReference]:
    """The producing object a ModelSource names, if it names one (not a uri or an architecture)."""
    if source.ref is None:
        return []
    return [SpecReference(key, str(source.ref.kind), source.ref.name, source.ref.namespace, f"{field}.ref")]


def dataset_reference(source: DatasetInput | None, key: str, field: str) -> list[SpecReference]:
    """The Dataset a DatasetInput names."""
    return [] if source is None else [SpecReference(key, "Dataset", source.name, source.namespace, field)]
