"""The serving section of the HTML report: FP32 / FP16 / INT8 ONNX size and latency per ModelDeployment.

Imported by `report.write_html` only (onnxruntime and matplotlib load when the report is written).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..stage import local_path
from .report import png, ref
from .state import ResourceState


def precision_comparison(repo_uri: str) -> dict[str, dict[str, float]]:
    """Size (MB) and ORT latency (ms, batch 1 x 16 tokens, 1 thread) of the FP32, FP16 and INT8 ONNX files.

    The convert stage leaves `onnx/model.onnx` (fp32) and the quantized file beside the repository; FP16 is
    derived here in a temp dir when the deployment did not produce it, so the comparison always has all three.
    """
    import statistics
    import tempfile

    import numpy as np
    import onnxruntime as ort

    try:
        onnx_dir = local_path(repo_uri).parent / "onnx"
    except ValueError:
        return {}
    fp32 = onnx_dir / "model.onnx"
    if not fp32.is_file():
        return {}
    files = {"fp32": fp32}
    for name, label in (("model.int8-dynamic.onnx", "int8"), ("model.int8-static.onnx", "int8-static"),
                        ("model.int8-weight-only.onnx", "int8-weight-only"), ("model.fp16.onnx", "fp16")):
        if (onnx_dir / name).is_file():
            files[label] = onnx_dir / name
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "fp16" not in files:
            try:
                import onnx
                from onnxruntime.transformers.float16 import convert_float_to_float16

                half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
                files["fp16"] = Path(tmp) / "model.fp16.onnx"
                onnx.save(half, str(files["fp16"]))
            except Exception:  # fp16 is a bonus column; fp32/int8 still compare
                pass
        for label, path in files.items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feeds: dict[str, Any] = {}
            for i in sess.get_inputs():
                if i.name == "input_ids":
                    feeds[i.name] = np.arange(1, 17, dtype=np.int64)[None, :] % 50 + 1
                elif i.name == "attention_mask":
                    feeds[i.name] = np.ones((1, 16), np.int64)
                elif i.name == "position_ids":
                    feeds[i.name] = np.arange(16, dtype=np.int64)[None, :]
            if len(feeds) != len(sess.get_inputs()):
                continue
            sess.run(None, feeds)
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times.append((time.perf_counter() - t0) * 1000)
            out[label] = {"sizeMB": path.stat().st_size / 1e6, "latencyMs": statistics.median(times)}
    return out


def serving_plot(states: list[ResourceState]) -> str | None:
    """FP32 vs FP16 vs INT8: file size and ORT latency per deployment, plus the Triton request time."""
    import matplotlib.pyplot as plt

    rows = []
    for s in states:
        if s.kind != "ModelDeployment" or not s.status.get("modelRepository"):
            continue
        try:
            comp = precision_comparison(str(s.status["modelRepository"]))
        except Exception:  # a deleted or foreign artifact: leave the section out
            comp = {}
        if comp:
            rows.append((ref(s), comp, (s.status.get("smoke") or {}).get("requestMs")))
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for (name, comp, triton_ms), (a1, a2) in zip(rows, axes, strict=True):
        labels = list(comp)
        sizes = [comp[k]["sizeMB"] for k in labels]
        lat = [comp[k]["latencyMs"] for k in labels]
        lat_labels = [f"ORT {k}" for k in labels]
        if isinstance(triton_ms, int | float):
            lat_labels.append("Triton gRPC (served)")
            lat.append(float(triton_ms))
        a1.bar(labels, sizes, color="#6a9f58")
        a1.set_title(f"{name}: model size (MB)", fontsize=9)
        a2.bar(lat_labels, lat, color="#4a7ab5")
        a2.set_title(f"{name}: latency per request, 1x16 tokens (ms)", fontsize=9)
        a2.tick_params(axis="x", rotation=20, labelsize=7)
        for ax, vals in ((a1, sizes), (a2, lat)):
            for i, v in enumerate(vals):
                ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
    return png(fig)
