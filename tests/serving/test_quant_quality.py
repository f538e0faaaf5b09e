"""Quantized-vs-fp32 quality in the conversion stage: held-out text, the minAgreement gate, weight-only int8."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubeforge.api.v1alpha1 import KINDS
from kubeforge.api.v1alpha1.modeldeployment import ModelDeploymentStatus
from kubeforge.stage import ResolvedInput, build_stage_config, local_path
from kubeforge_serving import ServingError
from kubeforge_serving.data import load_held_out
from kubeforge_serving.parity import below_gate, logit_stats
from test_convert import _run

pytestmark = pytest.mark.ml


def _config(tmp_path: Path, model_dir: Path, spec: dict[str, Any], held_out: Path | None = None) -> Path:
    md = KINDS["ModelDeployment"].model_validate(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team", "generation": 1},
            "spec": {"model": {"uri": f"file://{model_dir}"}, **spec},
        }
    )
    inputs = {}
    if held_out is not None:
        inputs["heldOut"] = ResolvedInput(kind="Dataset", name="qa", uri=f"file://{held_out}", digest="sha256:cd")
    path = tmp_path / "config.yaml"
    path.write_text(build_stage_config(md, inputs, f"file://{tmp_path}/store").dump())
    return path


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init causal LM: near-uniform logits, so int8 flips some argmaxes (the gate has work to do)."""
    import torch
    from conftest import _llama_config, build_tokenizer
    from transformers import LlamaForCausalLM

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("untrained-llama")
    build_tokenizer(path)
    LlamaForCausalLM(_llama_config(300)).save_pretrained(str(path))  # type: ignore[arg-type]
    return path


def test_parity_on_held_out_text_is_reported(tiny_dir: Path, calib_dir: Path, tmp_path: Path) -> None:
    spec = {"quantization": {"mode": "int8-dynamic", "minAgreement": 0.5}, "backend": "python"}
    rc, res, err = _run(_config(tmp_path, tiny_dir, spec, held_out=calib_dir))
    assert rc == 0, err
    q = res["details"]["quantization"]
    assert q["source"] == "held-out" and q["dataset"] == "Dataset/qa (validation)"  # no test split: validation
    assert q["positions"] > 56  # more than the 4 x 16 random-token check (56 real positions)
    assert 0.9 <= q["agreement"] <= 1 and 0.9 <= q["top5Overlap"] <= 1 and 0 < q["maxAbsLogitDelta"] < 1
    assert q["minAgreement"] == 0.5 and q["mode"] == "int8-dynamic"
    assert res["metrics"]["quantAgreement"] == q["agreement"]
    assert "held-out Dataset/qa (validation)" in res["message"] and "top-5 overlap" in res["message"]
    status = ModelDeploymentStatus.model_validate({"quantization": q})  # the typed status field takes it as is
    assert status.quantization is not None and status.quantization.top5_overlap == q["top5Overlap"]
    assert {e["kind"] for e in res["lineage"]} == {"External", "Dataset"}
    report = json.loads((local_path(res["details"]["modelRepository"]).parent / "conversion-report.json").read_text())
    assert report["quantization"]["parity"] == q


def test_min_agreement_above_measured_fails_with_named_condition(untrained_dir: Path, calib_dir: Path,
                                                                 tmp_path: Path) -> None:
    spec = {"quantization": {"mode": "int8-dynamic", "minAgreement": 0.999}, "backend": "python"}
    rc, res, _ = _run(_config(tmp_path, untrained_dir, spec, held_out=calib_dir))
    assert rc == 1 and res["succeeded"] is False
    assert res["reason"] == "QuantizationQualityBelowGate"
    q = res["details"]["quantization"]  # measured numbers travel with the failure (status.quantization)
    assert q["source"] == "held-out" and q["agreement"] < 0.999
    msg = res["message"]
    assert "spec.quantization.minAgreement=0.999" in msg and f"{q['agreement']:.4f}" in msg
    assert "spec.quantization.mode" in msg and "int8-weight-only" in msg and "\n" not in msg
    assert "artifact" not in res  # no repository for a model below the gate


def test_weight_only_int8_uses_matmulnbits(tiny_dir: Path, tmp_path: Path) -> None:
    import onnx

    spec = {"export": {"kvCache": True}, "quantization": {"mode": "int8-weight-only"}, "backend": "python"}
    rc, res, err = _run(_config(tmp_path, tiny_dir, spec))  # no heldOut input: random-token fallback
    assert rc == 0, err
    q = res["details"]["quantization"]
    assert q["mode"] == "int8-weight-only" and q["source"] == "random-tokens" and q["positions"] == 56
    assert "no held-out Dataset" in q["note"] and "random tokens" in res["message"]
    assert q["agreement"] >= 0.9 and q["top5Overlap"] >= 0.9 and q["maxAbsLogitDelta"] < 0.1
    conv = res["details"]["conversion"]
    assert conv["sizeBytes"] < 0.7 * conv["fp32SizeBytes"]
    repo = local_path(res["details"]["modelRepository"])
    for model in ("chat", "chat_kv"):
        ops = {n.op_type for n in onnx.load(str(repo / model / "1" / "model.onnx")).graph.node}
        assert "MatMulNBits" in ops, (model, ops)


def test_logit_stats_and_gate_message() -> None:
    ref = np.array([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    got = ref.copy()
    got[1, 4], got[1, 5] = 5.5, 4.0  # argmax flips in row 1; its top 5 stays the same set
    got[0, 0] = 3.25
    stats = logit_stats(ref, got)
    assert stats == {"agreement": 0.5, "top5Overlap": 1.0, "maxAbsLogitDelta": 1.5}
    quality = {"mode": "int8-dynamic", "source": "random-tokens", "positions": 2, **stats}
    assert below_gate(quality, None) is None and below_gate(quality, 0.5) is None
    msg = below_gate(quality, 0.9)
    assert msg is not None and "0.5000" in msg and "minAgreement=0.9" in msg and "random tokens" in msg


def test_held_out_split_order(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["train only"]}), tmp_path / "train.parquet")
    with pytest.raises(ServingError, match="no test split; no validation split") as err:
        load_held_out(tmp_path)
    assert err.value.reason == "HeldOutDataMissing"
    pq.write_table(pa.table({"question": ["2+2?"], "answer": ["4"]}), tmp_path / "validation.parquet")
    assert load_held_out(tmp_path) == (["2+2?\n4"], "validation")
    pq.write_table(pa.table({"question": ["q"], "choices": [["a", "b"]], "answer": [1]}), tmp_path / "test.parquet")
    assert load_held_out(tmp_path) == (["q\na\nb"], "test")
    assert load_held_out(tmp_path, "validation")[1] == "validation"  # the Evaluation's split first
