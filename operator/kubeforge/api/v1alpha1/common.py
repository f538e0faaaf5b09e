"""Types shared by all six kinds: references, storage, resources, status and conditions.

Every field carries a description because the CRDs are generated from these models and
`kubectl explain` shows exactly these strings.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "kubeforge.io"
VERSION = "v1alpha1"
API_VERSION: Literal["kubeforge.io/v1alpha1"] = "kubeforge.io/v1alpha1"

DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes resource.Quantity (k8s.io/apimachinery/pkg/api/resource): a decimal number, then a binary
# (Ki..Ei), decimal (n, u, m, k, M..E) or exponent (e3, E-2) suffix. Requests and sizes take no sign.
_QUANTITY_NUMBER = r"(([0-9]+([.][0-9]*)?)|([.][0-9]+))"
QUANTITY = rf"^[+-]?{_QUANTITY_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?{_QUANTITY_NUMBER}))?$"
RESOURCE_QUANTITY = rf"^{_QUANTITY_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?{_QUANTITY_NUMBER}))?$"
# Longest URI, image reference or free-form location string accepted (keeps objects and CEL costs bounded).
MAX_URI = 4096
# Object names become Job/Service names and the value of the kubeforge.io/owner label: at most 63 characters.
MAX_NAME = 63
MSG_NAME_LENGTH = f"metadata.name must be at most {MAX_NAME} characters (it names the object's Jobs and labels)"

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
        max_length=MAX_URI,
        description=(
            "Model location: a Hugging Face id (`org/name` or `hf://org/name`), `s3://bucket/prefix`, "
            "`pvc://claim/path` or `file:///path` to an HF-format directory."
        ),
    )
    ref: ModelRef | None = Field(default=None, description="Use the model artifact produced by another object.")
    architecture: ArchitectureConfig | None = Field(
        default=None, description="Initialise a new model from this architecture (training from scratch)."
    )
    revision: str | None = Field(
        default=None, max_length=256, description="Hub revision or commit when `uri` is a hub id."
    )
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
        default=None,
        min_length=1,
        max_length=MAX_URI,
        description="Tokenizer location (same forms as model uri); defaults to the model's own.",
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
        max_length=MAX_URI,
        pattern=r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|s3://[^/]+(/.*)?|file:///.*)$",
        description=(
            "Artifact location: `pvc://claim/sub/path`, `s3://bucket/prefix` or `file:///path`. "
            "Defaults to the operator's artifact store under `<namespace>/<kind>/<name>/`. On a cluster every "
            "run writes below it in its own folder, `g<generation>` (`g<generation>-r<n>` for the n-th re-run "
            "after an input changed), so a new run never overwrites what dependents recorded in their "
            "lineage; `status.artifact.uri` names the folder. `kubeforge run` keeps one folder per object."
        ),
    )
    s3_secret: SecretKeyRef | None = Field(default=None, description="Credentials for `s3://` locations.")
    s3_endpoint: str | None = Field(
        default=None, max_length=MAX_URI, description="Custom S3 endpoint URL (MinIO, Ceph, ...)."
    )


class Toleration(KubeModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=317, description="Taint key to tolerate; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


# --------------------------------------------------------------------------- pod overrides (allow-list)
#
# `spec.resources.podOverrides` is the only way an object shapes its pods, and it is an allow-list: a closed
# schema whose fields cannot raise a pod's privileges. Everything else a core/v1 PodSpec has (securityContext,
# serviceAccountName, automountServiceAccountToken, host namespaces, containers and so image/command/args,
# hostPath/secret/CSI volumes, ...) is an unknown field: `kubectl` (field validation Strict, its default
# since 1.27) gets `unknown field "spec.resources.podOverrides.<field>"` from the API server, and
# `kubeforge validate`/`run` reject it offline (extra="forbid"). Each CEL rule below has a pydantic twin
# raising the same message (tests/unit/test_api.py checks the pairs).

RESERVED_DOMAINS = ("kubeforge.io", "kubernetes.io", "k8s.io")
# A label/annotation key whose prefix is a reserved domain or a subdomain of one: kubeforge.io/...,
# app.kubernetes.io/..., container.apparmor.security.beta.kubernetes.io/..., node.k8s.io/...
RESERVED_KEY = r"^([^/]*[.])?(kubeforge[.]io|kubernetes[.]io|k8s[.]io)/"
QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# One path segment that is neither `.` nor `..` (no backsteps, no `//`).
_SEGMENT = r"([-_A-Za-z0-9][-_.A-Za-z0-9]*|[.][-_A-Za-z0-9][-_.A-Za-z0-9]*|[.][.][-_.A-Za-z0-9]+)"
ABSOLUTE_PATH = rf"^(/{_SEGMENT})+$"
RELATIVE_PATH = rf"^{_SEGMENT}(/{_SEGMENT})*$"
# Env the operator sets in workload containers (builders/common.py); user env may not shadow it.
RESERVED_ENV_PREFIX = "KUBEFORGE_"
RESERVED_ENV_NAMES = (
    "PYTHONUNBUFFERED", "HOME", "HF_HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NPROC_PER_NODE", "NODE_RANK",
)
# Volumes the operator adds (config, scratch, shared memory, artifact store, `pvc-<claim>` inputs).
RESERVED_VOLUME_NAMES = ("config", "tmp", "dshm", "artifact-store")
RESERVED_VOLUME_PREFIX = "pvc-"
# The operator's mounts and system paths: a user volume mounted there would replace the stage config
# (and so what the stage runs), the scratch or shared-memory dirs, input claims, or /dev, /proc, /sys.
RESERVED_MOUNT_PATHS = ("/dev", "/proc", "/sys", "/tmp", "/etc/kubeforge", "/mnt/pvc")


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _exactly_one(fields: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() == 1"


MSG_ANNOTATION_KEY = "annotation keys must be qualified names ([DNS-subdomain/]name, name at most 63 characters)"
MSG_ANNOTATION_RESERVED = (
    "annotation keys must not use the reserved prefixes kubeforge.io/, kubernetes.io/, k8s.io/ "
    "or a subdomain of them (app.kubernetes.io/, ...)"
)
MSG_LABEL_KEY = "label keys must be qualified names ([DNS-subdomain/]name, name at most 63 characters)"
MSG_LABEL_RESERVED = (
    "label keys must not use the reserved prefixes kubeforge.io/, kubernetes.io/, k8s.io/ "
    "or a subdomain of them (app.kubernetes.io/, ...)"
)
MSG_ENV_RESERVED = (
    f"env name is reserved for the operator: {RESERVED_ENV_PREFIX}* or one of {', '.join(RESERVED_ENV_NAMES)}"
)
MSG_ENV_VALUE = "set either value or valueFrom, not both"
MSG_ENV_SOURCE = "valueFrom needs exactly one of configMapKeyRef, fieldRef or resourceFieldRef"
MSG_VOLUME_SOURCE = "a volume needs exactly one of configMap, emptyDir, persistentVolumeClaim or projected"
MSG_VOLUME_RESERVED = (
    f"volume name is reserved for the operator's volumes ({', '.join(RESERVED_VOLUME_NAMES)}, "
    f"{RESERVED_VOLUME_PREFIX}*)"
)
MSG_MOUNT_RESERVED = f"mountPath must not be {', '.join(RESERVED_MOUNT_PATHS)}, below or above them"
MSG_MOUNT_VOLUME = "every volumeMounts[].name must be the name of a volume in podOverrides.volumes"
MSG_PROJECTION = "a projected source needs exactly one of configMap or downwardAPI"
MSG_DOWNWARD_FILE = "a downwardAPI item needs exactly one of fieldRef or resourceFieldRef"
MSG_PRIORITY_SYSTEM = "priorityClassName must not be a system- class (system-node-critical, system-cluster-critical)"


def _check_keys(keys: Any, fmt_msg: str, reserved_msg: str) -> None:
    bad = sorted(str(k) for k in keys if not re.match(QUALIFIED_KEY, str(k)))
    if bad:
        raise ValueError(f"{fmt_msg}: {', '.join(bad)}")
    reserved = sorted(str(k) for k in keys if re.match(RESERVED_KEY, str(k)))
    if reserved:
        raise ValueError(f"{reserved_msg}: {', '.join(reserved)}")


def _annotation_keys(value: dict[str, str]) -> dict[str, str]:
    _check_keys(value, MSG_ANNOTATION_KEY, MSG_ANNOTATION_RESERVED)
    return value


def _label_keys(value: dict[str, str]) -> dict[str, str]:
    _check_keys(value, MSG_LABEL_KEY, MSG_LABEL_RESERVED)
    return value


def _env_name(value: str) -> str:
    if value.startswith(RESERVED_ENV_PREFIX) or value in RESERVED_ENV_NAMES:
        raise ValueError(MSG_ENV_RESERVED)
    return value


def _volume_name(value: str) -> str:
    if value in RESERVED_VOLUME_NAMES or value.startswith(RESERVED_VOLUME_PREFIX):
        raise ValueError(MSG_VOLUME_RESERVED)
    return value


def _mount_path(value: str) -> str:
    if any(value == p or value.startswith(p + "/") or p.startswith(value + "/") for p in RESERVED_MOUNT_PATHS):
        raise ValueError(MSG_MOUNT_RESERVED)
    return value


def _priority_class(value: str) -> str:
    if value.startswith("system-"):
        raise ValueError(MSG_PRIORITY_SYSTEM)
    return value


def _keys_rules(fmt_msg: str, reserved_msg: str) -> JsonDict:
    return {
        "x-kubernetes-validations": [
            cel(f"self.all(k, k.matches('{QUALIFIED_KEY}'))", fmt_msg),
            cel(f"self.all(k, !k.matches('{RESERVED_KEY}'))", reserved_msg),
        ]
    }


PriorityClassName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        json_schema_extra={"x-kubernetes-validations": [cel("!self.startsWith('system-')", MSG_PRIORITY_SYSTEM)]},
    ),
    AfterValidator(_priority_class),
]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
PodLabels = Annotated[
    dict[str, LabelValue],
    Field(max_length=16, json_schema_extra=_keys_rules(MSG_LABEL_KEY, MSG_LABEL_RESERVED)),
    AfterValidator(_label_keys),
]
PodAnnotations = Annotated[
    dict[str, str],
    Field(max_length=16, json_schema_extra=_keys_rules(MSG_ANNOTATION_KEY, MSG_ANNOTATION_RESERVED)),
    AfterValidator(_annotation_keys),
]
NodeSelector = Annotated[dict[str, LabelValue], Field(max_length=32)]
FileMode = Annotated[int, Field(ge=0, le=0o777)]
PRESERVE: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}


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


def _list_map(key: str) -> JsonDict:
    """Entries are unique by `key` (the API server rejects duplicates; server-side apply merges by it)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


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


class Resources(KubeModel):
    """Compute for the stage's pods."""

    gpu: int = Field(default=0, ge=0, le=64, description="GPUs per pod (`nvidia.com/gpu`).")
    gpu_type: LabelValue | None = Field(
        default=None,
        description="GPU product to schedule on (matched against the `nvidia.com/gpu.product` node label).",
    )
    cpu: str = Field(
        default="1", max_length=64, pattern=RESOURCE_QUANTITY, description="CPU request (Kubernetes quantity)."
    )
    memory: str = Field(
        default="4Gi", max_length=64, pattern=RESOURCE_QUANTITY, description="Memory request (Kubernetes quantity)."
    )
    ephemeral_storage: str | None = Field(
        default=None,
        max_length=64,
        pattern=RESOURCE_QUANTITY,
        description=(
            "Local scratch space per pod (Kubernetes quantity; unset: 20Gi): the `/tmp` emptyDir's sizeLimit "
            "(Hugging Face cache, Triton's S3 downloads) and the container's ephemeral-storage request and limit."
        ),
    )
    node_selector: NodeSelector | None = Field(default=None, description="Node labels the pods must match.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = Field(
        default=None, description="Taints the pods tolerate."
    )
    priority_class_name: PriorityClassName | None = Field(
        default=None, description="PriorityClass of the pods (not a system-* class)."
    )
    queue_name: LabelValue | None = Field(
        default=None, description="Kueue LocalQueue; sets the `kueue.x-k8s.io/queue-name` label on the Job."
    )
    pod_overrides: PodOverrides | None = Field(
        default=None,
        description=(
            "Tenant-safe pod settings: scheduling, extra env, extra configMap/emptyDir/PVC/projected volumes, "
            "labels and annotations. Anything else (securityContext, serviceAccountName, host namespaces, "
            "images, commands, hostPath or secret volumes, ...) is rejected."
        ),
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


# Model-parallel rules of Distributed, in the order its validator mirrors them.
TP_RULES = [
    cel(
        "self.pipelineParallel == 1",
        "pipelineParallel must be 1: the Hugging Face Trainer and TRL have no pipeline-parallel training loop; "
        "split a large model with tensorParallel (DeepSpeed AutoTP) or shard it with zeroStage 3",
        ".pipelineParallel",
    ),
    cel(
        "self.tensorParallel == 1 || self.strategy == 'deepspeed'",
        "tensorParallel > 1 needs strategy deepspeed (DeepSpeed AutoTP): set strategy deepspeed, or tensorParallel 1",
        ".tensorParallel",
    ),
    cel(
        "self.tensorParallel == 1 || self.zeroStage <= 2",
        "tensorParallel > 1 needs zeroStage 0-2 (transformers cannot load a model for ZeRO-3 under AutoTP): "
        "set zeroStage 2, or tensorParallel 1 to shard with ZeRO-3 alone",
        ".zeroStage",
    ),
    cel(
        "(self.nodes * self.processesPerNode) % self.tensorParallel == 0",
        "tensorParallel must divide the worker processes nodes*processesPerNode (each tensor-parallel group is "
        "tensorParallel ranks): change processesPerNode or tensorParallel",
        ".tensorParallel",
    ),
]


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
    tensor_parallel: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Tensor-parallel degree (DeepSpeed AutoTP): each layer is split over this many consecutive ranks, "
            "data parallelism runs over nodes*processesPerNode/tensorParallel. Needs strategy deepspeed, "
            "zeroStage <= 2, full training (peft none or freeze) and at most the model's key-value heads."
        ),
    )
    pipeline_parallel: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Must be 1: the Hugging Face Trainer and TRL have no pipeline-parallel training loop.",
    )

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
                *TP_RULES,
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
        tp = self.tensor_parallel
        for broken, rule in zip(
            (
                self.pipeline_parallel != 1,
                tp > 1 and self.strategy != "deepspeed",
                tp > 1 and self.zero_stage > 2,
                self.world_size % tp != 0,
            ),
            TP_RULES,
            strict=True,
        ):
            if broken:
                raise ValueError(str(rule["message"]))
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
        default=None, max_length=65536, description="Initialise prompt-tuning embeddings from this text (else random)."
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


TP_NEEDS_FULL_TRAINING = cel(
    "!has(self.distributed) || self.distributed.tensorParallel == 1 || !has(self.peft) || "
    "self.peft.method == 'none' || self.peft.method == 'freeze'",
    "distributed.tensorParallel > 1 needs peft.method none or freeze: DeepSpeed AutoTP cannot split the layers "
    "PEFT wraps (LoRA/IA3/prefix/prompt adapters); use tensorParallel 1, or train fully",
    ".peft.method",
)


def check_tp_full_training(peft: Peft, dist: Distributed) -> None:
    """Python twin of TP_NEEDS_FULL_TRAINING."""
    if dist.tensor_parallel > 1 and peft.method not in (PeftMethod.NONE, PeftMethod.FREEZE):
        raise ValueError(str(TP_NEEDS_FULL_TRAINING["message"]))


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
