"""The ModelDeployment stage end to end: StageConfig in, repository + StageResult out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubeforge.api.v1alpha1 import KINDS
from kubeforge.stage import ResolvedInput, StageConfig, build_stage_config, local_path

pytestmark = pytest.mark.ml


def _config(tmp_path: Path, model_dir: Path, spec: dict[str, Any], calib: Path | None = None) -> Path:
    md = KINDS["ModelDeployment"].model_validate(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team", "generation": 3},
            "spec": {"model": {"uri": f"file://{model_dir}"}, **spec},
        }
    )
    inputs = {}
    if calib is not None:
        inputs["calibration"] = ResolvedInput(kind="Dataset", name="calib", uri=f"file://{calib}", digest="sha256:ab")
    cfg = build_stage_config(md, inputs, f"file://{tmp_path}/store")
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    return path


def _run(config: Path) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kubeforge_serving", "convert", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    cfg = StageConfig.load(config)
    assert cfg.result_path is not None
    result = json.loads(local_path(cfg.result_path).read_text())
    return proc.returncode, result, proc.stderr


def test_convert_int8_static_with_kv(tiny_dir: Path, calib_dir: Path, tmp_path: Path) -> None:
    spec = {
        "export": {"opset": 18, "kvCache": True},
        "quantization": {"mode": "int8-static", "calibration": {"name": "calib"}, "calibrationSamples": 16},
        "triton": {"maxBatchSize": 16, "instances": 2},
    }
    rc, res, err = _run(_config(tmp_path, tiny_dir, spec, calib_dir))
    assert rc == 0, err
    assert res["succeeded"] is True and res["reason"] == "Converted"
    conv = res["details"]["conversion"]
    assert conv["sizeBytes"] < conv["fp32SizeBytes"] and 0 < conv["argmaxAgreement"] <= 1
    assert conv["exportMaxLogitDiff"] < 1e-3
    assert res["artifact"]["digest"].startswith("sha256:")
    assert res["artifact"]["uri"] == res["details"]["modelRepository"]
    assert {e["kind"] for e in res["lineage"]} == {"External", "Dataset"}
    repo = local_path(res["details"]["modelRepository"])
    assert (repo / "chat" / "3" / "model.onnx").is_file() and (repo / "chat_kv" / "3" / "model.onnx").is_file()
    assert 'platform: "onnxruntime_onnx"' in (repo / "chat" / "config.pbtxt").read_text()
    assert "count: 2" in (repo / "chat" / "config.pbtxt").read_text()
    assert (repo / "chat" / "tokenizer" / "tokenizer.json").is_file()
    py = repo.parent / "repository-python"
    assert (py / "chat" / "3" / "model.py").is_file()
    report = json.loads((repo.parent / "conversion-report.json").read_text())
    assert report["quantization"]["calibrationSamples"] == 16


@pytest.mark.triton
def test_convert_reward_model_then_smoke(reward_dir: Path, tmp_path: Path) -> None:
    spec = {"export": {"task": "sequence-classification"}, "quantization": {"mode": "fp16"}, "backend": "python"}
    rc, res, err = _run(_config(tmp_path, reward_dir, spec))
    assert rc == 0, err
    out = local_path(res["details"]["modelRepository"]).parent
    proc = subprocess.run(
        [sys.executable, "-m", "kubeforge_serving", "smoke", "--output", str(out), "--text", "the quick fox"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["model"] == "chat" and isinstance(answer["score"], float)


@pytest.mark.parametrize(
    ("spec", "reason", "needle"),
    [
        ({"export": {"opset": 21}}, "UnsupportedOpset", "spec.export.opset=21"),
        ({"export": {"task": "sequence-classification", "kvCache": True}}, "InvalidExportSpec", "kvCache"),
    ],
)
def test_convert_failures_write_actionable_result(
    tiny_dir: Path, tmp_path: Path, spec: dict[str, Any], reason: str, needle: str
) -> None:
    rc, res, _ = _run(_config(tmp_path, tiny_dir, spec))
    assert rc == 1
    assert res["succeeded"] is False and res["reason"] == reason and needle in res["message"]
    assert "\n" not in res["message"]


def test_convert_model_without_weights(tiny_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_dir / "config.json").read_text())
    rc, res, _ = _run(_config(tmp_path, empty, {}))
    assert rc == 1 and res["reason"] == "ModelWeightsMissing" and "no weights" in res["message"]
