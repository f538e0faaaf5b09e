"""Whole-reconcile golden tests: objects in, status and children out (gafaelfawr's tests/data/kubernetes style).

Each `tests/data/kubernetes/input/<case>.yaml` holds the object to reconcile (first document) and the world it
sees: producers, its Job and pods (`_producers.yaml` is added under every case, replaced by name). One pass
runs against the in-memory API server of test_controllers; `output/<case>.yaml` is what it wrote: the status,
the children it created (summarised), its Events and the number of status writes. Regenerate with
KUBEFORGE_UPDATE_GOLDEN=1 after a deliberate change, and read the diff.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge.builders.workloads import stage_file
from kubeforge.controllers import cache, kube, passes
from test_controllers import FakeApi, api  # noqa: F401  (api: the fixture)

DATA = Path(__file__).resolve().parents[1] / "data" / "kubernetes"
CASES = sorted(p.stem for p in (DATA / "input").glob("*.yaml") if not p.stem.startswith("_"))
UPDATE = os.environ.get("KUBEFORGE_UPDATE_GOLDEN") == "1"
TIME_KEYS = ("lastTransitionTime", "startTime", "completionTime")


class World(FakeApi):
    """FakeApi keyed by each object's own namespace, with label-selected lists (pods of a Job)."""

    def load(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            meta = doc["metadata"]
            meta.setdefault("resourceVersion", "1")
            self.objects[(doc["kind"], meta.get("namespace"), meta["name"])] = doc
            if doc["kind"] not in ("Pod", "Namespace"):
                cache.remember(copy.deepcopy(doc))

    async def list_objects(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        want = dict(part.split("=", 1) for part in selector.split(",") if part)
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == kind and ns == namespace
                and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in want.items())]


def _docs(case: str) -> list[dict[str, Any]]:
    own = [d for d in yaml.safe_load_all((DATA / "input" / f"{case}.yaml").read_text()) if d]
    shared = [d for d in yaml.safe_load_all((DATA / "input" / "_producers.yaml").read_text()) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in own}
    return own + [d for d in shared if (d["kind"], d["metadata"]["name"]) not in names]


def _times(value: Any) -> Any:
    """Times this pass wrote become `<now>`; times from the input stay."""
    if isinstance(value, dict):
        return {k: ("<now>" if k in TIME_KEYS and isinstance(v, str) and not v.startswith("2026-11-01")
                    else _times(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_times(v) for v in value]
    return value


def _child(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    out: dict[str, Any] = {"kind": manifest["kind"], "name": meta["name"], "labels": meta.get("labels") or {},
                           "owner": [r["uid"] for r in meta.get("ownerReferences") or []]}
    if manifest["kind"] == "Job":
        cfg = json.loads(stage_file(manifest))
        out["config"] = {"outputUri": cfg["outputUri"],
                         "inputs": {k: [v["uri"], v.get("digest")] for k, v in sorted(cfg["inputs"].items())}}
        out["command"] = manifest["spec"]["template"]["spec"]["containers"][0]["command"]
    return out


@pytest.mark.parametrize("case", CASES)
def test_reconcile_golden(case: str, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    world = World()
    for name in ("get_kubeforge", "get", "create", "list_objects", "delete", "patch_status"):
        monkeypatch.setattr(kube, name, getattr(world, name))
    monkeypatch.setattr("kopf.event", world.event)
    docs = _docs(case)
    world.load(docs)
    target = docs[0]
    key = (target["kind"], target["metadata"]["namespace"], target["metadata"]["name"])
    asyncio.run(passes.run_pass(copy.deepcopy(world.objects[key])))
    got = {
        "status": _times(world.objects[key].get("status") or {}),
        "created": [_child(c) for c in world.created],
        "events": [{"reason": reason, "message": message} for _, reason, message in world.events],
        "statusWrites": world.status_writes,
    }
    path = DATA / "output" / f"{case}.yaml"
    if UPDATE:
        path.write_text(yaml.safe_dump(got, sort_keys=False, width=120))
    assert path.exists(), f"no golden for {case}: run with KUBEFORGE_UPDATE_GOLDEN=1"
    assert got == yaml.safe_load(path.read_text())
