"""Export and quantization on tiny real models (CPU, a few seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kubeforge_serving import ServingError
from kubeforge_serving.data import load_texts
from kubeforge_serving.export import export_with_parity, load_model, parity_inputs, torch_logits
from kubeforge_serving.quantize import quantize

pytestmark = pytest.mark.ml


@pytest.mark.parametrize("opset", [17, 18])
def test_causal_export_with_kv_cache_matches_pytorch(tiny_dir: Path, tmp_path: Path, opset: int) -> None:
    rep = export_with_parity(tiny_dir, tmp_path, opset=opset, kv_cache=True)
    assert rep["task"] == "causal-lm" and rep["opset"] == opset
    assert rep["maxLogitDiff"] < 1e-4 and rep["argmaxAgreement"] == 1.0
    assert rep["kv"]["maxLogitDiff"] < 1e-4 and rep["kv"]["argmaxAgreement"] == 1.0
    assert json.loads((tmp_path / "export-report.json").read_text())["fp32SizeBytes"] == rep["fp32SizeBytes"]
    import onnx

    model = onnx.load(str(tmp_path / "model.onnx"))
    assert any(o.version == opset for o in model.opset_import if o.domain in ("", "ai.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]


def test_reward_model_export(reward_dir: Path, tmp_path: Path) -> None:
    rep = export_with_parity(reward_dir, tmp_path)  # task auto-detected from architectures
    assert rep["task"] == "sequence-classification"
    assert rep["maxLogitDiff"] < 1e-4
    ref = np.load(tmp_path / "parity-reference.npz")["logits"]
    assert ref.shape == (4, 1)


def test_lora_adapter_is_merged(lora_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    rep = export_with_parity(lora_dir, tmp_path)
    assert rep["maxLogitDiff"] < 1e-4
    merged = np.load(tmp_path / "parity-reference.npz")["logits"]
    base, _ = load_model(tiny_dir)
    base_logits = torch_logits(base, parity_inputs(base, "causal-lm"))
    assert np.abs(merged - base_logits).max() > 1e-3  # the adapter really changed the exported model


def test_unsupported_opset_names_the_field(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ServingError, match=r"spec\.export\.opset=21 .*14\.\.20") as err:
        export_with_parity(tiny_dir, tmp_path, opset=21)
    assert err.value.reason == "UnsupportedOpset"


def test_model_dir_without_weights(tiny_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(ServingError, match="has no weights") as err:
        export_with_parity(tmp_path, tmp_path / "out")
    assert err.value.reason == "ModelWeightsMissing"


def test_parity_threshold_fails_export(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ServingError, match=r"exceeds spec\.export\.maxLogitDiff") as err:
        export_with_parity(tiny_dir, tmp_path, max_logit_diff=1e-12)
    assert err.value.reason == "ParityFailed"


def test_quantize_all_modes(tiny_dir: Path, calib_dir: Path, tmp_path: Path) -> None:
    exp = export_with_parity(tiny_dir, tmp_path, kv_cache=True)
    fp16 = quantize(tmp_path, "fp16")
    int8 = quantize(tmp_path, "int8-dynamic")
    static = quantize(tmp_path, "int8-static", load_texts(calib_dir, "train"), tiny_dir, samples=16)
    for rep in (fp16, int8, static):
        assert rep["sizeBytes"] < exp["fp32SizeBytes"], rep
        assert 0 < rep["maxLogitDiff"] < 1.0, rep
        assert Path(rep["onnx"]).is_file() and Path(rep["kv"]["onnx"]).is_file()
    assert fp16["maxLogitDiff"] < 0.01 and fp16["argmaxAgreement"] >= 0.95
    assert int8["argmaxAgreement"] >= 0.9
    assert int8["sizeBytes"] < 0.6 * exp["fp32SizeBytes"]
    assert static["calibrationSamples"] == 16
    assert (tmp_path / "quantize-int8-static-report.json").is_file()
    trt = quantize(tmp_path, "tensorrt")  # no GPU here: skipped, with the reason
    assert trt["skipped"] is True and "GPU" in trt["message"]
    with pytest.raises(ServingError, match=r"spec\.quantization\.maxLogitDiff") as err:
        quantize(tmp_path, "int8-dynamic", max_logit_diff=1e-9)
    assert err.value.reason == "QuantizationParityFailed"


def test_calibration_layouts(tmp_path: Path, calib_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert load_texts(calib_dir, "validation")[0].endswith(" yes")  # prompt + completion
    pq.write_table(pa.table({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}), tmp_path / "train.parquet")
    assert load_texts(tmp_path) == ["ab"]
    pq.write_table(pa.table({"foo": ["a"]}), tmp_path / "test.parquet")
    with pytest.raises(ServingError, match="calibration needs `text`"):
        load_texts(tmp_path, "test")
    with pytest.raises(ServingError, match=r"split 'validation' not found"):
        load_texts(tmp_path, "validation")
