"""The allow-list rules of `spec.resources.podOverrides`: reserved names and paths, key and path patterns,
their messages and the constrained types built from them.

Each CEL rule has a pydantic twin raising the same message (tests/unit/test_api.py checks the pairs).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic.config import JsonDict

from .base import cel

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
# Env the operator sets in workload containers (builders/workloads.py, builders/pods.py); user env may not shadow it.
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


def _list_map(key: str) -> JsonDict:
    """Entries are unique by `key` (the API server rejects duplicates; server-side apply merges by it)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}
