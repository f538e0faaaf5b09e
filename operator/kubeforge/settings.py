"""Operator settings, read once from the environment (the Helm chart sets these variables)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .api.v1alpha1.podspec import Toleration


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


class WorkloadPodDefaults(BaseModel):
    """Pod settings the cluster operator applies to every workload pod (chart value `workloadPodDefaults`).

    This is where settings that objects may not make themselves belong (objects only get the allow-list of
    `spec.resources.podOverrides`). Env `KUBEFORGE_WORKLOAD_POD_DEFAULTS`, a JSON object in camelCase.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels every workload pod must match; an object's own keys win."
    )
    tolerations: tuple[Toleration, ...] = Field(default=(), description="Taints every workload pod tolerates.")
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations on every workload pod (any key, reserved prefixes included); an object's own win.",
    )


class OperatorSettings(BaseModel):
    """What the operator puts into the workloads it creates and how it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer_image: str = Field(default="ghcr.io/kubeforge/trainer:0.1.0", description="Stage image (Jobs).")
    serving_image: str = Field(default="ghcr.io/kubeforge/serving:0.1.0", description="Conversion Job image.")
    triton_image: str = Field(
        default="ghcr.io/kubeforge/triton:0.1.0",
        description="Triton image: NGC Triton plus onnxruntime for the python form (serving/triton/Dockerfile).",
    )
    image_pull_policy: str = Field(default="IfNotPresent", description="imagePullPolicy of workload containers.")
    artifact_pvc: str = Field(default="kubeforge-artifacts", description="PVC backing the default artifact store.")
    store_root: str = Field(default="pvc://kubeforge-artifacts", description="Root URI of the artifact store.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Operator metrics port (0: off).")
    namespaces: tuple[str, ...] = Field(default=(), description="Namespaces to watch (empty: all).")
    poll_interval: float = Field(default=2.0, gt=0, description="Seconds between checks of running work.")
    workers: int = Field(
        default=32, ge=1, le=1024,
        description=(
            "Consumers of the work queue: passes that may run at once (each is mostly API waits; the API "
            "client runs 32 requests at once)."
        ),
    )
    workload_pod_defaults: WorkloadPodDefaults = Field(
        default_factory=WorkloadPodDefaults, description="Pod settings applied to every workload pod."
    )
    test_hooks: bool = Field(
        default=False,
        description=(
            "Accept a StageResult from the `kubeforge.io/result` annotation of a Job or pod when the container "
            "left no termination message (KWOK runs no containers). Never enable in production: it lets "
            "whoever can annotate a Job decide an Evaluation's outcome."
        ),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from KUBEFORGE_* variables; unset ones keep their defaults."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field, var in (
            ("trainer_image", "KUBEFORGE_TRAINER_IMAGE"),
            ("serving_image", "KUBEFORGE_SERVING_IMAGE"),
            ("triton_image", "KUBEFORGE_TRITON_IMAGE"),
            ("image_pull_policy", "KUBEFORGE_IMAGE_PULL_POLICY"),
            ("artifact_pvc", "KUBEFORGE_ARTIFACT_PVC"),
            ("store_root", "KUBEFORGE_STORE_ROOT"),
        ):
            if env.get(var):
                values[field] = env[var]
        if env.get("KUBEFORGE_METRICS_PORT"):
            values["metrics_port"] = int(env["KUBEFORGE_METRICS_PORT"])
        if env.get("KUBEFORGE_POLL_INTERVAL"):
            values["poll_interval"] = float(env["KUBEFORGE_POLL_INTERVAL"])
        if env.get("KUBEFORGE_WORKERS"):
            values["workers"] = int(env["KUBEFORGE_WORKERS"])
        if env.get("KUBEFORGE_WATCH_NAMESPACES"):
            values["namespaces"] = tuple(n.strip() for n in env["KUBEFORGE_WATCH_NAMESPACES"].split(",") if n.strip())
        if env.get("KUBEFORGE_WORKLOAD_POD_DEFAULTS"):
            values["workload_pod_defaults"] = WorkloadPodDefaults.model_validate(
                json.loads(env["KUBEFORGE_WORKLOAD_POD_DEFAULTS"])
            )
        if env.get("KUBEFORGE_TEST_HOOKS"):
            values["test_hooks"] = _bool(env["KUBEFORGE_TEST_HOOKS"])
        return cls.model_validate(values)
