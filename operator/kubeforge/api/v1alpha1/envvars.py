"""Extra environment variables of the workload container (`podOverrides.env`): values, ConfigMap keys and
downward API fields, never Secrets."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from .base import RESOURCE_QUANTITY, KubeModel, cel
from .podrules import (
    ENV_NAME,
    MSG_ENV_RESERVED,
    MSG_ENV_SOURCE,
    MSG_ENV_VALUE,
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIX,
    ObjectName,
    _cel_list,
    _exactly_one,
)


def _env_name(value: str) -> str:
    if value.startswith(RESERVED_ENV_PREFIX) or value in RESERVED_ENV_NAMES:
        raise ValueError(MSG_ENV_RESERVED)
    return value


class ConfigMapKeySelector(KubeModel):
    """One key of a ConfigMap in the object's namespace."""

    name: ObjectName = Field(description="ConfigMap name.")
    key: str = Field(min_length=1, max_length=253, description="Key in the ConfigMap.")
    optional: bool | None = Field(default=None, description="Start the pod even if the ConfigMap or key is missing.")


class ObjectFieldSelector(KubeModel):
    """A field of the pod (downward API), e.g. `metadata.name` or `status.podIP`."""

    field_path: str = Field(min_length=1, max_length=256, description="Path of the field, e.g. `metadata.name`.")
    api_version: str | None = Field(default=None, max_length=64, description="Schema version of fieldPath (v1).")


class ResourceFieldSelector(KubeModel):
    """A resource request or limit of the container (downward API)."""

    resource: str = Field(
        min_length=1, max_length=64, description="Resource to expose, e.g. `limits.cpu` or `requests.memory`."
    )
    container_name: str | None = Field(
        default=None, max_length=63, description="Container whose resource is read (volumes only)."
    )
    divisor: str | None = Field(
        default=None, max_length=64, pattern=RESOURCE_QUANTITY, description="Unit of the exposed value, e.g. `1Mi`."
    )


class EnvVarSource(KubeModel):
    """Where an env value comes from: a ConfigMap key, a pod field or a container resource (never a Secret)."""

    config_map_key_ref: ConfigMapKeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: ObjectFieldSelector | None = Field(default=None, description="A field of the pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(
        default=None, description="A resource request or limit of the container."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(_exactly_one(("configMapKeyRef", "fieldRef", "resourceFieldRef")), MSG_ENV_SOURCE)
            ]
        }
    )

    @model_validator(mode="after")
    def _one(self) -> EnvVarSource:
        if sum(x is not None for x in (self.config_map_key_ref, self.field_ref, self.resource_field_ref)) != 1:
            raise ValueError(MSG_ENV_SOURCE)
        return self


class EnvVar(KubeModel):
    """An extra environment variable of the workload container."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            pattern=ENV_NAME,
            json_schema_extra={
                "x-kubernetes-validations": [
                    cel(
                        f"!self.startsWith('{RESERVED_ENV_PREFIX}') && !(self in {_cel_list(RESERVED_ENV_NAMES)})",
                        MSG_ENV_RESERVED,
                    )
                ]
            },
        ),
        AfterValidator(_env_name),
    ] = Field(description="Variable name; names the operator sets (KUBEFORGE_*, HOME, AWS_*, ...) are reserved.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Value from a ConfigMap key, pod field or container resource (no Secrets)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel("!(has(self.value) && has(self.valueFrom))", MSG_ENV_VALUE)]
        }
    )

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(MSG_ENV_VALUE)
        return self
