"""Validating an object's spec against its kind's model, parsed once per generation and kept in
`OperatorState.parsed` (state.py); a failure is a one-line message naming the fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..api.v1alpha1 import KINDS, KubeResource
from ..manifests import explain
from .cache import key_of
from .state import current


def _parse(body: dict[str, Any]) -> tuple[KubeResource | None, str]:
    data = {k: v for k, v in body.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    try:
        return KINDS[body["kind"]].model_validate(data), ""
    except ValidationError as exc:
        return None, "; ".join(explain(exc))


def validate(body: dict[str, Any]) -> tuple[KubeResource | None, str]:
    """Parse the object with its kind's model; on failure a one-line message naming the fields.

    Once per generation (and labels/annotations, which the model keeps in metadata): every watch event and
    pass of an unchanged object reuses the parse (OperatorState.parsed) instead of validating again."""
    meta = body.get("metadata") or {}
    if not meta.get("uid"):
        return _parse(body)
    stamp = (meta.get("uid"), meta.get("generation"), meta.get("labels"), meta.get("annotations"),
             meta.get("deletionTimestamp"))
    parsed = current().parsed
    key = key_of(body)
    hit = parsed.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    out = _parse(body)
    parsed[key] = (stamp, out)
    return out
