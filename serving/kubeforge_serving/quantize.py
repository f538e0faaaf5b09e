"""Quantize an exported ONNX model (fp16, int8 dynamic/static/weight-only) and report parity vs PyTorch fp32.

All paths use onnxruntime's own tools: `float16.convert_float_to_float16(keep_io_types=True)`
(onnxconverter-common's variant wrote models ORT refused), `quantize_dynamic`, `quantize_static`
with a CalibrationDataReader over tokenised Dataset texts, and `MatMulNBitsQuantizer` (8 bits) for
weight-only int8. Quantized-vs-fp32 quality on held-out text is measured by `parity.py`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import ServingError
from .export import REFERENCE_FILE, REPORT_FILE, Task, compare, file_size, ort_logits, ort_session

Mode = Literal["none", "fp16", "int8-dynamic", "int8-static", "int8-weight-only", "tensorrt"]
MODES: tuple[str, ...] = ("none", "fp16", "int8-dynamic", "int8-static", "int8-weight-only", "tensorrt")
# Weight-only blocks: 128 input channels per scale/zero point (onnxruntime's default). On the bench's
# 3.6M-param LLaMA (hidden 256), block 32 vs 128: argmax agreement vs fp32 0.986 vs 0.981, ORT CPU latency
# (1x64 tokens, 2 threads) 18 vs 13 ms; asymmetric halved max |Δlogit| vs symmetric on the test LLaMA.
WEIGHT_ONLY_BLOCK = 128
# Static int8 quantizes only the matmuls: attention-mask adds carry finfo.min and clip badly.
STATIC_OP_TYPES = ["MatMul", "Gemm"]


def quantize_fp16(src: str | Path, dst: str | Path) -> Path:
    """FP16 weights and compute; inputs/outputs stay fp32/int64 so clients do not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(dst))
    return Path(dst)


def quantize_int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    """INT8 weights, activations quantized on the fly (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def quantize_int8_weight_only(src: str | Path, dst: str | Path, block_size: int = WEIGHT_ONLY_BLOCK) -> Path:
    """8-bit block-wise (asymmetric) weights of every constant-weight MatMul as a MatMulNBits node.

    Activations stay float (accuracy_level unset), so only weight rounding differs from fp32. Embedding
    Gathers stay fp32: MatMulNBitsQuantizer quantizes Gather at 4 bits only.
    """
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=8)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    finally:
        log.setLevel(level)
    return Path(dst)


def calibration_feeds(
    tokenizer_dir: str | Path, texts: list[str], input_names: list[str], max_length: int = 64
) -> list[dict[str, np.ndarray]]:
    """One feed per text (batch 1), tokenised like serving traffic."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    feeds = []
    for text in texts:
        enc = tok(text, truncation=True, max_length=max_length, return_tensors="np")
        feed: dict[str, np.ndarray] = {
            k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask") if k in input_names
        }
        if feed["input_ids"].shape[1] > 0:
            feeds.append(feed)
    return feeds


def quantize_int8_static(src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """INT8 weights and activations (QDQ) with ranges calibrated (MinMax) on `feeds`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise ServingError(
            "int8-static needs calibration texts; the calibration Dataset gave none", reason="CalibrationDataInvalid"
        )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=STATIC_OP_TYPES,
        per_channel=True,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return Path(dst)


def tensorrt_status() -> tuple[bool, str]:
    """Whether ORT's TensorRT execution provider can run here, and why not."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in providers:
        return False, (
            "TensorRT skipped: needs an NVIDIA GPU with onnxruntime-gpu's TensorrtExecutionProvider "
            f"(available here: {', '.join(providers)}); Triton's onnxruntime backend applies TensorRT at load time"
        )
    return True, "TensorrtExecutionProvider available"


def _load_reference(export_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, Task, dict[str, Any]]:
    ref_path = export_dir / REFERENCE_FILE
    rep_path = export_dir / REPORT_FILE
    if not ref_path.is_file() or not rep_path.is_file():
        raise ServingError(
            f"{export_dir} has no {REFERENCE_FILE}/{REPORT_FILE}; run `python -m kubeforge_serving export` first",
            reason="ExportMissing",
        )
    data = np.load(ref_path)
    inputs = {k: data[k] for k in ("input_ids", "attention_mask")}
    report = json.loads(rep_path.read_text())
    return inputs, data["logits"], report["task"], report


def quantize(
    export_dir: str | Path,
    mode: str,
    calibration_texts: list[str] | None = None,
    tokenizer_dir: str | Path | None = None,
    samples: int = 64,
    max_logit_diff: float | None = None,
) -> dict[str, Any]:
    """Quantize `<export_dir>/model.onnx` (and `model_kv.onnx`) and write `quantize-<mode>-report.json`.

    Returns the report; raises ServingError when parity is over `max_logit_diff`.
    """
    if mode not in MODES:
        raise ServingError(
            f"spec.quantization.mode={mode!r} is not one of {', '.join(MODES)}", reason="InvalidQuantization"
        )
    root = Path(export_dir)
    inputs, ref, task, exp = _load_reference(root)
    src = root / "model.onnx"
    t0 = time.monotonic()
    report: dict[str, Any] = {"mode": mode, "fp32SizeBytes": file_size(src)}
    dst = root / f"model.{mode}.onnx"
    kv_src = root / "model_kv.onnx"
    kv_dst = root / f"model_kv.{mode}.onnx" if kv_src.is_file() else None
    providers: list[str] | None = None
    if mode == "none":
        dst, kv_dst = src, (kv_src if kv_src.is_file() else None)
    elif mode == "fp16":
        quantize_fp16(src, dst)
        if kv_dst:
            quantize_fp16(kv_src, kv_dst)
    elif mode == "int8-dynamic":
        quantize_int8_dynamic(src, dst)
        if kv_dst:
            quantize_int8_dynamic(kv_src, kv_dst)
    elif mode == "int8-weight-only":
        quantize_int8_weight_only(src, dst)
        if kv_dst:
            quantize_int8_weight_only(kv_src, kv_dst)
    elif mode == "int8-static":
        if not calibration_texts or tokenizer_dir is None:
            raise ServingError(
                "quantization mode int8-static needs calibration texts and a tokenizer; set "
                "spec.quantization.calibration",
                reason="CalibrationDataMissing",
            )
        feeds = calibration_feeds(tokenizer_dir, calibration_texts[:samples], ["input_ids", "attention_mask"])
        quantize_int8_static(src, dst, feeds)
        report["calibrationSamples"] = len(feeds)
        if kv_dst:
            # The KV graph's empty past tensors cannot be calibrated; its weights go int8 dynamically.
            quantize_int8_dynamic(kv_src, kv_dst)
            report["kvMode"] = "int8-dynamic"
    else:  # tensorrt
        ok, msg = tensorrt_status()
        if not ok:
            report.update({"skipped": True, "message": msg})
            (root / f"quantize-{mode}-report.json").write_text(json.dumps(report, indent=2))
            return report
        shutil.copyfile(src, dst)
        providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider"]  # type: ignore[list-item]
    got = ort_logits(dst, inputs, providers=providers)
    report.update({"onnx": str(dst), "sizeBytes": file_size(dst), **compare(ref, got, inputs["attention_mask"], task)})
    if kv_dst:
        report["kv"] = {"onnx": str(kv_dst), "sizeBytes": file_size(kv_dst)}
    report["seconds"] = round(time.monotonic() - t0, 3)
    report["exportMaxLogitDiff"] = exp.get("maxLogitDiff")
    (root / f"quantize-{mode}-report.json").write_text(json.dumps(report, indent=2))
    if max_logit_diff is not None and not report["maxLogitDiff"] <= max_logit_diff:
        raise ServingError(
            f"{mode} max |logit diff| {report['maxLogitDiff']:.3g} vs PyTorch fp32 exceeds "
            f"spec.quantization.maxLogitDiff={max_logit_diff:g}; use a milder mode or raise the threshold",
            reason="QuantizationParityFailed",
        )
    return report


def session_check(path: str | Path) -> None:
    """Fail early when ORT cannot load a produced model (better here than in Triton)."""
    try:
        ort_session(path)
    except Exception as exc:
        raise ServingError(
            f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}", reason="InvalidModel"
        ) from exc
