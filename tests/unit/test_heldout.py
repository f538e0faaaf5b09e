"""Which held-out Dataset split a ModelDeployment's quantization parity reads (operator and local runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubeforge import kinds
from kubeforge.api.v1alpha1 import ModelDeployment
from kubeforge.builders.workloads import stage_file
from kubeforge.controllers import cache
from kubeforge.heldout import (
    HeldOutSource,
    dataset_artifact,
    held_out_input,
    held_out_sources,
    resolve_held_out,
    source_keys,
)
from kubeforge.runner.state import StateStore
from kubeforge.stage import StageConfig, StageResult
from test_controllers import api, succeeded
from test_runner import fake_stage, make_runner, pipeline_docs, write_manifests

__all__ = ["api", "fake_stage"]  # fixtures, imported for the operator and runner tests


def _md(mode: str = "int8-dynamic", gate: list[str] | None = None) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "serve", "namespace": "ml"},
        "spec": {"model": {"ref": {"kind": "TrainingJob", "name": "sft"}}, "gate": {"evaluations": gate or []},
                 "quantization": {"mode": mode}},
    })


def _dataset(uri: str, ok: bool = True, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    cond = {"type": "Succeeded", "status": "True" if ok else "Unknown", "observedGeneration": observed}
    return {"metadata": {"generation": generation},
            "status": {"artifactUri": uri, "digest": "sha256:" + uri[-1], "conditions": [cond]}}


BODIES: dict[tuple[str, str, str], dict[str, Any]] = {
    ("Evaluation", "ml", "ev"): {"spec": {"dataset": {"name": "qa", "split": "test"}}},
    ("Evaluation", "ml", "ev-train"): {"spec": {"dataset": {"name": "qa", "split": "train"}}},
    ("TrainingJob", "ml", "sft"): {"spec": {"dataset": {"name": "chats", "namespace": "data"}}},
}


def test_sources_gate_evaluations_first_then_the_models_dataset() -> None:
    md = _md(gate=["ev", "missing", "ev-train"])
    assert source_keys(md)[-1] == ("TrainingJob", "ml", "sft")
    assert held_out_sources(md, BODIES) == [
        HeldOutSource("ml", "qa", "test", "Evaluation/ev"),
        HeldOutSource("ml", "qa", None, "Evaluation/ev-train"),  # a train split is not held out: test/validation
        HeldOutSource("data", "chats", None, "TrainingJob/sft"),
    ]


def test_first_ready_dataset_wins() -> None:
    sources = held_out_sources(_md(gate=["ev"]), BODIES)
    datasets = {("Dataset", "ml", "qa"): _dataset("file:///qa", ok=False),
                ("Dataset", "data", "chats"): _dataset("file:///chats")}
    got = held_out_input(sources, datasets)
    assert got is not None
    assert (got.name, got.uri, got.digest, got.split) == ("chats", "file:///chats", "sha256:s", None)
    datasets[("Dataset", "ml", "qa")] = _dataset("file:///qa")
    got = held_out_input(sources, datasets)
    assert got is not None and (got.name, got.split) == ("qa", "test")
    assert held_out_input(sources, {}) is None  # nothing ready: the stage falls back to random tokens


def test_dataset_artifact_needs_current_success() -> None:
    assert dataset_artifact(_dataset("file:///x")) == ("file:///x", "sha256:x")
    assert dataset_artifact(_dataset("file:///x", observed=1)) is None  # an older generation succeeded
    assert dataset_artifact(_dataset("file:///x", ok=False)) is None
    assert dataset_artifact(None) is None


def test_mode_none_measures_nothing() -> None:
    assert resolve_held_out(_md(mode="none", gate=["ev"]), lambda k: BODIES.get(k)) is None


def test_local_runner_passes_the_gate_evaluations_split(tmp_path: Path, fake_stage: Path) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs())
    runner, out = make_runner(manifests, tmp_path / "wd", fake_stage)
    assert runner.run() == 0, out.getvalue()
    store = StateStore(tmp_path / "wd")
    md = store.find("ModelDeployment/serve")
    cfg = StageConfig.load(store.config_path(md.key))
    held = cfg.inputs["heldOut"]  # Evaluation/ev reads Dataset/qa's test split
    assert (held.kind, held.name, held.split) == ("Dataset", "qa", "test")
    assert held.digest == store.find("Dataset/qa").status["digest"]
    assert any(e["name"] == "qa" for e in md.status["lineage"])


def test_runner_lifts_quantization_into_status() -> None:
    quality = {"mode": "int8-weight-only", "source": "held-out", "dataset": "Dataset/qa (test)", "positions": 9,
               "agreement": 1.0, "top5Overlap": 0.98, "maxAbsLogitDelta": 0.01}
    res = StageResult(succeeded=False, reason="QuantizationQualityBelowGate", details={"quantization": quality})
    assert kinds.of("ModelDeployment").lift(res, "file:///md", {}).fields["quantization"] == quality


def test_operator_adds_held_out_input_to_the_conversion_config(api: Any) -> None:
    import asyncio


    ds = api.put("Dataset", "ds", {"task": "text", "source": {"uris": ["s3://raw/x.jsonl"]}}, conditions=succeeded())
    ds["status"].update(artifactUri="pvc://a/ds", digest="sha256:ds")
    tj = api.put("TrainingJob", "sft", {"method": "sft", "model": {"uri": "org/base"}, "dataset": {"name": "ds"}},
                 conditions=succeeded())
    tj["status"]["artifact"] = {"uri": "pvc://a/sft", "digest": "sha256:m"}
    for body in (ds, tj):
        cache.remember(body)  # the watch cache sees the finished producers
    api.put("ModelDeployment", "serve", {"model": {"ref": {"kind": "TrainingJob", "name": "sft"}},
                                         "quantization": {"mode": "int8-weight-only"}})
    asyncio.run(api.passes("ModelDeployment", "serve"))
    job = next(c for c in api.created if c["kind"] == "Job")
    cfg = StageConfig.model_validate_json(stage_file(job))
    held = cfg.inputs["heldOut"]
    assert (held.name, held.uri, held.digest, held.split) == ("ds", "pvc://a/ds", "sha256:ds", None)
    lineage = api.objects[("ModelDeployment", "ml", "serve")]["status"]["lineage"]
    assert {e["name"] for e in lineage} == {"ds", "sft"}


def test_report_table_shows_quality_and_gate() -> None:
    from kubeforge.runner.report_quality import quantization_html
    from kubeforge.runner.state import ResourceState

    quality = {"mode": "int8-dynamic", "source": "held-out", "dataset": "Dataset/qa (test)", "positions": 412,
               "agreement": 0.9612, "top5Overlap": 0.9433, "maxAbsLogitDelta": 0.27, "minAgreement": 0.98}
    states = [ResourceState(kind="ModelDeployment", name="serve", status={"quantization": quality}),
              ResourceState(kind="ModelDeployment", name="plain", status={})]
    page = quantization_html(states)
    assert page is not None and page.count("<tr>") == 2
    for text in ("ModelDeployment/serve", "held-out Dataset/qa (test)", "412", "0.9612", "0.9433", "0.27",
                 "class='bad'>0.98"):
        assert text in page, text
    assert quantization_html(states[1:]) is None
