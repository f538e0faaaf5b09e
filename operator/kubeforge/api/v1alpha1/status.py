"""Status shared by every kind: conditions, produced artifacts, lineage and live progress."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import ConfigDict, Field

from .base import KubeModel


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
