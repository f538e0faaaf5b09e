"""`spec.resources.podOverrides` (`PodOverrides`) and the scheduling types it shares with `resources`.

`podOverrides` is the only way an object shapes its pods, and it is an allow-list: a closed schema whose fields
cannot raise a pod's privileges. Everything else a core/v1 PodSpec has (securityContext, serviceAccountName,
automountServiceAccountToken, host namespaces, containers and so image/command/args, hostPath/secret/CSI
volumes, ...) is an unknown field: `kubectl` (field validation Strict, its default since 1.27) gets
`unknown field "spec.resources.podOverrides.<field>"` from the API server, and `kubeforge validate`/`run`
reject it offline (extra="forbid").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .base import KubeModel, cel
from .envvars import EnvVar
from .podrules import (
    MSG_MOUNT_VOLUME,
    PRESERVE,
    NodeSelector,
    PodAnnotations,
    PodLabels,
    PriorityClassName,
    _list_map,
)
from .volumes import Volume, VolumeMount


class Toleration(KubeModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=317, description="Taint key to tolerate; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class Affinity(KubeModel):
    """Scheduling affinity (core/v1 Affinity); each part is passed through as written."""

    node_affinity: dict[str, Any] | None = Field(
        default=None, description="core/v1 NodeAffinity: nodes the pods prefer or require.", json_schema_extra=PRESERVE
    )
    pod_affinity: dict[str, Any] | None = Field(
        default=None, description="core/v1 PodAffinity: co-locate with matching pods.", json_schema_extra=PRESERVE
    )
    pod_anti_affinity: dict[str, Any] | None = Field(
        default=None, description="core/v1 PodAntiAffinity: keep away from matching pods.", json_schema_extra=PRESERVE
    )


class TopologySpreadConstraint(KubeModel):
    """How pods spread across a topology domain (core/v1 TopologySpreadConstraint)."""

    max_skew: int = Field(ge=1, description="Largest allowed difference in matching pods between two domains.")
    topology_key: str = Field(min_length=1, max_length=317, description="Node label that defines a domain.")
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        description="DoNotSchedule or ScheduleAnyway when the skew cannot be met."
    )
    label_selector: dict[str, Any] | None = Field(
        default=None, description="meta/v1 LabelSelector of the pods counted.", json_schema_extra=PRESERVE
    )
    match_label_keys: list[Annotated[str, Field(max_length=317)]] | None = Field(
        default=None, max_length=16, description="Pod label keys whose values further select the pods counted."
    )
    min_domains: int | None = Field(default=None, ge=1, description="Minimum number of eligible domains.")
    node_affinity_policy: Literal["Honor", "Ignore"] | None = Field(
        default=None, description="Whether node affinity limits the domains counted (Honor or Ignore)."
    )
    node_taints_policy: Literal["Honor", "Ignore"] | None = Field(
        default=None, description="Whether node taints limit the domains counted (Honor or Ignore)."
    )


class PodOverrides(KubeModel):
    """Tenant-safe additions to the workload pods; an allow-list, everything else is rejected.

    Security settings (securityContext, serviceAccountName, automountServiceAccountToken, host namespaces),
    containers, images, commands and hostPath/secret volumes are not fields here: the operator owns them and
    every pod it renders meets the Pod Security `restricted` level. Cluster-wide pod defaults belong in the
    chart's `workloadPodDefaults`.
    """

    node_selector: NodeSelector | None = Field(
        default=None, description="Node labels the pods must match (added to resources.nodeSelector)."
    )
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = Field(
        default=None, description="Taints the pods tolerate (added to resources.tolerations)."
    )
    affinity: Affinity | None = Field(default=None, description="Node affinity and pod (anti-)affinity.")
    topology_spread_constraints: Annotated[list[TopologySpreadConstraint], Field(max_length=8)] | None = Field(
        default=None, description="How the pods spread across zones or nodes."
    )
    priority_class_name: PriorityClassName | None = Field(
        default=None, description="PriorityClass of the pods (wins over resources.priorityClassName); not system-*."
    )
    env: Annotated[list[EnvVar], Field(max_length=64)] | None = Field(
        default=None,
        description="Extra environment variables of the workload container (values or ConfigMap/pod refs only).",
        json_schema_extra=_list_map("name"),
    )
    volumes: Annotated[list[Volume], Field(max_length=16)] | None = Field(
        default=None,
        description="Extra volumes: configMap, emptyDir, persistentVolumeClaim or projected (ConfigMap/downward API).",
        json_schema_extra=_list_map("name"),
    )
    volume_mounts: Annotated[list[VolumeMount], Field(max_length=32)] | None = Field(
        default=None,
        description="Mounts of the extra volumes in the workload container.",
        json_schema_extra=_list_map("mountPath"),
    )
    annotations: PodAnnotations | None = Field(
        default=None,
        description="Extra pod annotations; keys under kubeforge.io/, kubernetes.io/, k8s.io/ (and subdomains) "
        "are reserved.",
    )
    labels: PodLabels | None = Field(
        default=None,
        description="Extra pod labels; keys under kubeforge.io/, kubernetes.io/, k8s.io/ (and subdomains) "
        "are reserved.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
                    "self.volumes.exists(v, v.name == m.name))",
                    MSG_MOUNT_VOLUME,
                    ".volumeMounts",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> PodOverrides:
        names = {v.name for v in self.volumes or []}
        if any(m.name not in names for m in self.volume_mounts or []):
            raise ValueError(MSG_MOUNT_VOLUME)
        return self

    @field_validator("env", "volumes")
    @classmethod
    def _unique_names(cls, value: list[Any] | None) -> list[Any] | None:
        names = [item.name for item in value or []]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate names: {', '.join(dup)}")
        return value

    @field_validator("volume_mounts")
    @classmethod
    def _unique_paths(cls, value: list[VolumeMount] | None) -> list[VolumeMount] | None:
        paths = [m.mount_path for m in value or []]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise ValueError(f"duplicate mountPath: {', '.join(dup)}")
        return value
