"""The watch cache of bodies: the latest (slimmed) body seen per object, fed by the watch streams and by
the operator's own status writes, and read instead of GETs (it lives in `OperatorState.bodies`, state.py).

Bodies are plain dicts (`plain`), never changed in place; a newer resourceVersion always wins (`remember`,
`freshest`).
"""

from __future__ import annotations

from typing import Any

from .state import Key, current


def key_of(body: dict[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(body.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))


def _rv(body: dict[str, Any] | None) -> int:
    try:
        return int((body or {}).get("metadata", {}).get("resourceVersion") or -1)
    except ValueError:
        return -1


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a body: no managedFields (often the largest part of metadata), and of a Job or
    Deployment only what a pass reads (metadata, status, a Deployment's replicas), not the pod template."""
    meta = body.get("metadata") or {}
    out = dict(body)
    if "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    if body.get("kind") == "Job":
        out.pop("spec", None)
    elif body.get("kind") == "Deployment":
        out["spec"] = {"replicas": (body.get("spec") or {}).get("replicas", 1)}
    return out


def remember(body: dict[str, Any]) -> None:
    """Cache a body (slimmed) unless a newer one is already cached (etcd revisions only grow)."""
    key = key_of(body)
    bodies = current().bodies
    if _rv(body) >= _rv(bodies.get(key)):
        bodies[key] = slim(body)


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop a deleted object from the cache."""
    current().bodies.pop((kind, namespace, name), None)


def cached(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The latest body seen for that object, if any."""
    return current().bodies.get((kind, namespace, name))


def freshest(body: dict[str, Any]) -> dict[str, Any]:
    """`body` or the cached one, whichever the API server wrote last."""
    other = current().bodies.get(key_of(body))
    return other if other is not None and _rv(other) > _rv(body) else body


def plain(body: Any) -> dict[str, Any]:
    """A kopf body (or a dict) as a plain dict: a shallow copy. Bodies are never changed in place (kopf
    replaces, not mutates, what a watch event brought; StatusWriter copies the conditions it edits), so the
    nested parts are shared instead of deep-copied on every event."""
    return dict(body)
