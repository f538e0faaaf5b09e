"""Extra volumes of the workload pods and their mounts (`podOverrides.volumes`, `volumeMounts`): configMap,
emptyDir, persistentVolumeClaim and projected only."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from .base import DNS1123, RESOURCE_QUANTITY, KubeModel, Name, cel
from .envvars import ObjectFieldSelector, ResourceFieldSelector
from .podrules import (
    ABSOLUTE_PATH,
    MSG_DOWNWARD_FILE,
    MSG_MOUNT_RESERVED,
    MSG_PROJECTION,
    MSG_VOLUME_RESERVED,
    MSG_VOLUME_SOURCE,
    RELATIVE_PATH,
    RESERVED_MOUNT_PATHS,
    RESERVED_VOLUME_NAMES,
    RESERVED_VOLUME_PREFIX,
    FileMode,
    ObjectName,
    _cel_list,
    _exactly_one,
)


def _volume_name(value: str) -> str:
    if value in RESERVED_VOLUME_NAMES or value.startswith(RESERVED_VOLUME_PREFIX):
        raise ValueError(MSG_VOLUME_RESERVED)
    return value


def _mount_path(value: str) -> str:
    if any(value == p or value.startswith(p + "/") or p.startswith(value + "/") for p in RESERVED_MOUNT_PATHS):
        raise ValueError(MSG_MOUNT_RESERVED)
    return value


class KeyToPath(KubeModel):
    """One ConfigMap key projected to a file."""

    key: str = Field(min_length=1, max_length=253, description="Key in the ConfigMap.")
    path: str = Field(
        max_length=256, pattern=RELATIVE_PATH, description="Relative file path in the volume (no `..`)."
    )
    mode: FileMode | None = Field(default=None, description="File mode bits (0-0777).")


class ConfigMapVolumeSource(KubeModel):
    """A ConfigMap of the object's namespace as files."""

    name: ObjectName = Field(description="ConfigMap name.")
    items: list[KeyToPath] | None = Field(
        default=None, max_length=64, description="Keys to project (default: every key, as a file of its name)."
    )
    default_mode: FileMode | None = Field(default=None, description="Mode bits of the files (0-0777).")
    optional: bool | None = Field(default=None, description="Start the pod even if the ConfigMap is missing.")


class EmptyDirVolumeSource(KubeModel):
    """Scratch space that lives as long as the pod."""

    medium: Literal["", "Memory"] | None = Field(
        default=None, description="`Memory` for a tmpfs (counts against the memory limit); default node disk."
    )
    size_limit: str | None = Field(
        default=None, max_length=64, pattern=RESOURCE_QUANTITY, description="Largest size, e.g. `10Gi`."
    )


class PersistentVolumeClaimVolumeSource(KubeModel):
    """A PersistentVolumeClaim of the object's namespace."""

    claim_name: ObjectName = Field(description="Claim name.")
    read_only: bool | None = Field(default=None, description="Mount the claim read-only.")


class ConfigMapProjection(KubeModel):
    """A ConfigMap inside a projected volume."""

    name: ObjectName = Field(description="ConfigMap name.")
    items: list[KeyToPath] | None = Field(
        default=None, max_length=64, description="Keys to project (default: every key)."
    )
    optional: bool | None = Field(default=None, description="Start the pod even if the ConfigMap is missing.")


class DownwardAPIVolumeFile(KubeModel):
    """A pod field or container resource written to a file."""

    path: str = Field(max_length=256, pattern=RELATIVE_PATH, description="Relative file path (no `..`).")
    field_ref: ObjectFieldSelector | None = Field(default=None, description="A field of the pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(
        default=None, description="A resource request or limit of a container."
    )
    mode: FileMode | None = Field(default=None, description="File mode bits (0-0777).")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel(_exactly_one(("fieldRef", "resourceFieldRef")), MSG_DOWNWARD_FILE)]
        }
    )

    @model_validator(mode="after")
    def _one(self) -> DownwardAPIVolumeFile:
        if (self.field_ref is None) == (self.resource_field_ref is None):
            raise ValueError(MSG_DOWNWARD_FILE)
        return self


class DownwardAPIProjection(KubeModel):
    """Pod fields and container resources inside a projected volume."""

    items: list[DownwardAPIVolumeFile] = Field(min_length=1, max_length=32, description="Files to write.")


class VolumeProjection(KubeModel):
    """One source of a projected volume: a ConfigMap or downward API files (no Secrets, no tokens)."""

    config_map: ConfigMapProjection | None = Field(default=None, description="A ConfigMap.")
    downward_api: DownwardAPIProjection | None = Field(
        default=None, alias="downwardAPI", description="Pod fields and container resources."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel(_exactly_one(("configMap", "downwardAPI")), MSG_PROJECTION)]
        }
    )

    @model_validator(mode="after")
    def _one(self) -> VolumeProjection:
        if (self.config_map is None) == (self.downward_api is None):
            raise ValueError(MSG_PROJECTION)
        return self


class ProjectedVolumeSource(KubeModel):
    """Several ConfigMaps and downward API files in one directory."""

    sources: list[VolumeProjection] = Field(min_length=1, max_length=16, description="What the volume holds.")
    default_mode: FileMode | None = Field(default=None, description="Mode bits of the files (0-0777).")


class Volume(KubeModel):
    """An extra volume of a safe type: configMap, emptyDir, persistentVolumeClaim or projected."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=63,
            pattern=DNS1123,
            json_schema_extra={
                "x-kubernetes-validations": [
                    cel(
                        f"!(self in {_cel_list(RESERVED_VOLUME_NAMES)}) && "
                        f"!self.startsWith('{RESERVED_VOLUME_PREFIX}')",
                        MSG_VOLUME_RESERVED,
                    )
                ]
            },
        ),
        AfterValidator(_volume_name),
    ] = Field(description="Volume name, referenced by volumeMounts[].name.")
    config_map: ConfigMapVolumeSource | None = Field(default=None, description="A ConfigMap as files.")
    empty_dir: EmptyDirVolumeSource | None = Field(default=None, description="Scratch space for the pod's lifetime.")
    persistent_volume_claim: PersistentVolumeClaimVolumeSource | None = Field(
        default=None, description="A PersistentVolumeClaim of the object's namespace."
    )
    projected: ProjectedVolumeSource | None = Field(
        default=None, description="ConfigMaps and downward API files in one directory."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(_exactly_one(("configMap", "emptyDir", "persistentVolumeClaim", "projected")), MSG_VOLUME_SOURCE)
            ]
        }
    )

    @model_validator(mode="after")
    def _one(self) -> Volume:
        sources = (self.config_map, self.empty_dir, self.persistent_volume_claim, self.projected)
        if sum(x is not None for x in sources) != 1:
            raise ValueError(MSG_VOLUME_SOURCE)
        return self


class VolumeMount(KubeModel):
    """Where the workload container mounts one of the extra volumes."""

    name: Name = Field(description="Name of a volume in podOverrides.volumes.")
    mount_path: Annotated[
        str,
        Field(
            max_length=256,
            pattern=ABSOLUTE_PATH,
            json_schema_extra={
                "x-kubernetes-validations": [
                    cel(
                        f"{_cel_list(RESERVED_MOUNT_PATHS)}.all(p, self != p && !self.startsWith(p + '/') && "
                        "!p.startsWith(self + '/'))",
                        MSG_MOUNT_RESERVED,
                    )
                ]
            },
        ),
        AfterValidator(_mount_path),
    ] = Field(
        description="Absolute path in the container; not /dev, /proc, /sys, /tmp, /etc/kubeforge, /mnt/pvc, "
        "nor below or above them."
    )
    sub_path: str | None = Field(
        default=None, max_length=256, pattern=RELATIVE_PATH, description="Mount only this relative path of the volume."
    )
    read_only: bool | None = Field(default=None, description="Mount read-only.")
