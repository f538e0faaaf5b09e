"""Held-out text for a ModelDeployment's quantization parity: which Dataset split the `convert` stage reads.

Order: the data of each spec.gate Evaluation (its own split when that is `test` or `validation`), then the
Dataset the model's producer (TrainingJob, RewardModel, RLHFJob) trained on, whose `test`, else `validation`,
split is held out from training. Best effort: a source that is not ready is skipped, never waited for; the
stage falls back to random tokens (and says so) when no `heldOut` input arrives. The operator and the local
runner both use these pure functions, each with its own way of looking objects up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .api.v1alpha1 import ModelDeployment
from .stage import ResolvedInput

HELD_OUT = "heldOut"
HELD_OUT_SPLITS = ("test", "validation")

Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class HeldOutSource:
    """A Dataset whose held-out split the parity check may read."""

    namespace: str
    name: str
    split: Literal["test", "validation"] | None  # the Evaluation's split; None: `test`, else `validation`
    via: str  # `Evaluation/x` or `TrainingJob/y`, for messages

    @property
    def key(self) -> Key:
        """The Dataset's identity."""
        return ("Dataset", self.namespace, self.name)


def wanted(md: ModelDeployment) -> bool:
    """Whether the conversion measures quantization parity at all (not for mode `none`)."""
    return md.spec.quantization.mode != "none"


def source_keys(md: ModelDeployment) -> list[Key]:
    """Objects whose spec names the held-out Dataset: the gate Evaluations, then the model's producer."""
    keys: list[Key] = [("Evaluation", md.namespace, ev) for ev in md.spec.gate.evaluations]
    ref = md.spec.model.ref
    if ref is not None:
        keys.append((str(ref.kind), ref.namespace or md.namespace, ref.name))
    return keys


def held_out_sources(md: ModelDeployment, bodies: Mapping[Key, Mapping[str, Any] | None]) -> list[HeldOutSource]:
    """Candidate Datasets in order of preference, from the bodies (spec is enough) of `source_keys(md)`."""
    out: list[HeldOutSource] = []
    for key in source_keys(md):
        body = bodies.get(key)
        ds = ((body or {}).get("spec") or {}).get("dataset")
        if not isinstance(ds, Mapping) or not ds.get("name"):
            continue
        kind, ns, name = key
        split = ds.get("split") if kind == "Evaluation" and ds.get("split") in HELD_OUT_SPLITS else None
        src = HeldOutSource(namespace=str(ds.get("namespace") or ns), name=str(ds["name"]), split=split,
                            via=f"{kind}/{name}")
        if src not in out:
            out.append(src)
    return out


def dataset_artifact(body: Mapping[str, Any] | None) -> tuple[str, str | None] | None:
    """(uri, digest) of a Dataset whose Succeeded condition is True for its current generation, else None."""
    if not body:
        return None
    status = body.get("status") or {}
    gen = (body.get("metadata") or {}).get("generation")
    ok = any(
        c.get("type") == "Succeeded" and c.get("status") == "True"
        and (gen is None or c.get("observedGeneration") in (None, gen))
        for c in status.get("conditions") or []
    )
    art = status.get("artifact") or {}
    uri = art.get("uri") or status.get("artifactUri")
    if not ok or not uri:
        return None
    return str(uri), art.get("digest") or status.get("digest")


def held_out_input(
    sources: list[HeldOutSource], datasets: Mapping[Key, Mapping[str, Any] | None]
) -> ResolvedInput | None:
    """The first candidate whose Dataset has an artifact, as the `heldOut` input."""
    for src in sources:
        produced = dataset_artifact(datasets.get(src.key))
        if produced is not None:
            return ResolvedInput(kind="Dataset", name=src.name, uri=produced[0], digest=produced[1], split=src.split)
    return None


def resolve_held_out(md: ModelDeployment, lookup: Callable[[Key], Mapping[str, Any] | None]) -> ResolvedInput | None:
    """The `heldOut` input with a synchronous `lookup` (the local runner; the operator looks up concurrently)."""
    if not wanted(md):
        return None
    sources = held_out_sources(md, {k: lookup(k) for k in source_keys(md)})
    return held_out_input(sources, {src.key: lookup(src.key) for src in sources})
