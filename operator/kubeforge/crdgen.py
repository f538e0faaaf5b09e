"""Generate CustomResourceDefinitions from the pydantic models.

The API server wants structural OpenAPI v3: no `$ref`, no `anyOf` for optionals (`nullable` instead),
boolean `exclusiveMinimum`. Pydantic emits JSON Schema 2020-12, so this module translates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .api.v1alpha1 import GROUP, KINDS, VERSION, KubeResource

_DROP = {"title", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s and flatten pydantic's JSON Schema into structural OpenAPI."""
    if isinstance(node, list):
        return [_resolve(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = dict(target)
        # Site-level keys (the field's description, its validations) win over the definition's.
        site_rules = node.pop("x-kubernetes-validations", [])
        merged.update(node)
        if site_rules:
            merged["x-kubernetes-validations"] = list(target.get("x-kubernetes-validations", [])) + site_rules
        node = merged
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = {**_resolve(inner, defs), **node}
    if "anyOf" in node:
        options = node.pop("anyOf")
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unions are not structural: {options}")
        inner = _resolve(non_null[0], defs)
        site_rules = node.pop("x-kubernetes-validations", [])
        node = {**inner, **node}
        if site_rules:
            node["x-kubernetes-validations"] = list(inner.get("x-kubernetes-validations", [])) + site_rules
        if len(non_null) < len(options):
            node["nullable"] = True
            if node.get("default", "unset") is None:
                node.pop("default")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        elif key == "items":
            out[key] = _resolve(value, defs)
        elif key == "additionalProperties":
            if value is False:
                continue  # structural schemas prune unknown fields; strict field validation rejects them
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out[key] = _resolve(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    if out.get("default", "unset") is None:
        out.pop("default")
    if "enum" in out and "type" not in out:
        sample = out["enum"][0]
        out["type"] = "integer" if isinstance(sample, int) else "string"
    return out


def openapi_schema(model: type[KubeResource]) -> dict[str, Any]:
    """Structural schema of one kind (apiVersion, kind, metadata, spec, status)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    resolved = _resolve(raw, defs)
    props = resolved["properties"]
    spec = props["spec"]
    status = props["status"]
    status.pop("nullable", None)
    # kopf keeps its own bookkeeping in status; later versions may add fields.
    status["x-kubernetes-preserve-unknown-fields"] = True
    schema: dict[str, Any] = {
        "type": "object",
        "description": (model.__doc__ or model.KIND).strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": props["apiVersion"]["description"]},
            "kind": {"type": "string", "description": props["kind"]["description"]},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if model.TOP_VALIDATIONS:
        schema["x-kubernetes-validations"] = model.TOP_VALIDATIONS
    return schema


def crd(model: type[KubeResource]) -> dict[str, Any]:
    """The CustomResourceDefinition for one kind."""
    plural = model.PLURAL
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubeforge"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": plural,
                "singular": model.KIND.lower(),
                "shortNames": list(model.SHORT_NAMES),
                "categories": ["kubeforge"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": model.PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                }
            ],
        },
    }


def render_all() -> dict[str, str]:
    """File name → YAML text for every kind."""
    header = "# Generated by `kubeforge crds` from operator/kubeforge/api. Do not edit by hand.\n"
    return {
        f"{m.PLURAL}.{GROUP}.yaml": header + yaml.safe_dump(crd(m), sort_keys=False, width=120)
        for m in KINDS.values()
    }


def write_all(directory: Path) -> list[Path]:
    """Write every CRD into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of CRD files in `directory` that differ from the models (empty when in sync)."""
    out = []
    for name, text in render_all().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            out.append(name)
    return out
