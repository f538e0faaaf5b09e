"""The base of the v1alpha1 API: group and version, the name/URI/quantity limits, `cel` and `KubeModel`.

Every field carries a description because the CRDs are generated from these models and
`kubectl explain` shows exactly these strings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
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
