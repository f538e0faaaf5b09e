"""`KubeResource`, the top-level object every kind subclasses, and the printer columns the kinds share."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from .base import API_VERSION, MAX_NAME, MSG_NAME_LENGTH, KubeModel, cel
from .references import SpecReference


class KubeResource(KubeModel):
    """Top-level object: apiVersion, kind, metadata, spec, status."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAMES: ClassVar[list[str]] = []
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = []
    # Rules on the whole object; CEL may read metadata.name there (and nowhere else).
    TOP_VALIDATIONS: ClassVar[list[JsonDict]] = [cel(f"size(self.metadata.name) <= {MAX_NAME}", MSG_NAME_LENGTH)]

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["kubeforge.io/v1alpha1"] = Field(
        default=API_VERSION, description="API version: `kubeforge.io/v1alpha1`."
    )
    kind: str = Field(description="Kind of the object.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")

    @field_validator("metadata")
    @classmethod
    def _name_length(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(str(value.get("name") or "")) > MAX_NAME:
            raise ValueError(MSG_NAME_LENGTH)
        return value

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

    def stage(self) -> str:
        """The stage that runs this object (trainer or serving image), e.g. `prepare`, `sft`, `convert`."""
        raise NotImplementedError(f"{self.kind} runs no stage")

    def references(self) -> list[SpecReference]:
        """Every reference of the spec to another object, inputs first and gate Evaluations last."""
        return []

    def uri_inputs(self) -> dict[str, str]:
        """Inputs the spec gives as plain URIs (no producing object), by input key."""
        return {}


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
    {"name": "ETA", "type": "number", "jsonPath": ".status.progress.etaSeconds",
     "description": "Estimated seconds left in the running stage."},
]
