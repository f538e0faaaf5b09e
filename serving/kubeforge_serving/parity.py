"""Quantized vs fp32 ONNX quality, both under onnxruntime, on held-out text (random tokens as a fallback).

Why held-out text: the export's parity inputs are 4 x 16 random token ids (56 real positions), which say
little about the text a model serves; argmax flips concentrate where the model is unsure, and random tokens
put it somewhere it never was in training. The held-out split of the Dataset behind the model (or the data
of the Evaluation that gates it) is what the model will see. Three numbers, over every real position:

- agreement: fraction of positions whose argmax (next token, or class) matches fp32;
- top5Overlap: mean |top5(fp32) ∩ top5(quantized)| / 5 (k = the class count when it is below 5);
- maxAbsLogitDelta: the largest |logit difference|.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import ServingError

MAX_TEXTS = 64  # held-out records read
MAX_TOKENS = 128  # tokens per record (truncated)
TOP_K = 5
SOURCE_HELD_OUT = "held-out"
SOURCE_RANDOM = "random-tokens"


def logit_stats(ref: np.ndarray, got: np.ndarray, k: int = TOP_K) -> dict[str, float]:
    """Agreement, top-k overlap and max |Δ| over rows of [positions, classes] logits."""
    if ref.shape != got.shape:
        raise ServingError(f"quantized logits shape {got.shape} != fp32 {ref.shape}", reason="ParityFailed")
    if ref.shape[0] == 0:
        return {"agreement": 1.0, "top5Overlap": 1.0, "maxAbsLogitDelta": 0.0}
    k = min(k, ref.shape[-1])
    delta = float(np.max(np.abs(ref - got))) if np.isfinite(got).all() else float("inf")
    top_ref = np.argpartition(-ref, k - 1, axis=-1)[:, :k]
    top_got = np.argpartition(-got, k - 1, axis=-1)[:, :k]
    overlap = (top_ref[:, :, None] == top_got[:, None, :]).any(-1).sum(-1) / k
    return {
        "agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
        "top5Overlap": float(overlap.mean()),
        "maxAbsLogitDelta": delta,
    }


def _rows(logits: np.ndarray, mask: np.ndarray, task: str) -> np.ndarray:
    """Causal LM: the unpadded positions; classifier: one row per sequence."""
    if task == "causal-lm":
        return np.asarray(logits[mask.astype(bool)])
    return logits.reshape(logits.shape[0], -1)


def compare_models(
    fp32_path: str | Path, quant_path: str | Path, feeds: list[dict[str, np.ndarray]], task: str
) -> dict[str, Any]:
    """Run both models on every feed (onnxruntime CPU) and compare their logits."""
    from .export import ort_session

    sessions = [ort_session(p) for p in (fp32_path, quant_path)]
    names = [{i.name for i in s.get_inputs()} for s in sessions]
    refs: list[np.ndarray] = []
    gots: list[np.ndarray] = []
    for feed in feeds:
        ref, got = (
            np.asarray(s.run(["logits"], {k: v for k, v in feed.items() if k in n})[0], dtype=np.float32)
            for s, n in zip(sessions, names, strict=True)
        )
        refs.append(_rows(ref, feed["attention_mask"], task))
        gots.append(_rows(got, feed["attention_mask"], task))
    ref_all, got_all = np.concatenate(refs), np.concatenate(gots)
    return {**logit_stats(ref_all, got_all), "positions": int(ref_all.shape[0])}


def text_feeds(
    tokenizer_dir: str | Path, texts: list[str], max_tokens: int = MAX_TOKENS
) -> list[dict[str, np.ndarray]]:
    """One batch-1 feed per text (no padding), tokenised like serving traffic."""
    from .quantize import calibration_feeds

    return calibration_feeds(tokenizer_dir, texts, ["input_ids", "attention_mask"], max_length=max_tokens)


def random_feeds(export_dir: str | Path) -> list[dict[str, np.ndarray]]:
    """The export's parity inputs (4 x 16 random ids, one row half padding)."""
    from .export import REFERENCE_FILE

    data = np.load(Path(export_dir) / REFERENCE_FILE)
    return [{k: data[k] for k in ("input_ids", "attention_mask")}]


def held_out(
    dataset_dir: Path | None, split: str | None, label: str, tokenizer_dir: Path | None
) -> tuple[list[dict[str, np.ndarray]] | None, str, str | None]:
    """(feeds, dataset label, note): feeds None, with the reason in `note`, when no held-out text is usable."""
    from .data import load_held_out

    if dataset_dir is None:
        why = "no held-out Dataset reachable (no spec.gate Evaluation data, no test/validation split behind the model)"
        return None, "", why
    if tokenizer_dir is None:
        return None, "", "no tokenizer to encode held-out text"
    try:
        texts, used = load_held_out(dataset_dir, split, MAX_TEXTS)
    except ServingError as exc:
        return None, "", f"held-out {label} unusable: {exc}"
    feeds = text_feeds(tokenizer_dir, texts)
    if not feeds:
        return None, "", f"held-out {label} ({used}) tokenised to nothing"
    return feeds, f"{label} ({used})", None


def measure(
    export_dir: str | Path,
    quant_path: str | Path,
    mode: str,
    task: str,
    feeds: list[dict[str, np.ndarray]] | None = None,
    dataset: str = "",
    note: str | None = None,
) -> dict[str, Any]:
    """The status.quantization block: held-out `feeds` when given, else the export's random tokens."""
    root = Path(export_dir)
    source = SOURCE_HELD_OUT if feeds else SOURCE_RANDOM
    stats = compare_models(root / "model.onnx", quant_path, feeds or random_feeds(root), task)
    out: dict[str, Any] = {"mode": mode, "source": source, **stats}
    if feeds:
        out["dataset"] = dataset
    elif note:
        out["note"] = note
    return out


def below_gate(quality: dict[str, Any], min_agreement: float | None) -> str | None:
    """The QuantizationQualityBelowGate message when agreement is under spec.quantization.minAgreement."""
    if min_agreement is None or quality.get("agreement") is None or quality["agreement"] >= min_agreement:
        return None
    held = quality["source"] == SOURCE_HELD_OUT
    where = f"held-out {quality.get('dataset')}" if held else "random tokens (no held-out text)"
    milder = "fp16 or int8-weight-only" if quality["mode"] != "int8-weight-only" else "fp16"
    return (
        f"{quality['mode']} argmax agreement {quality['agreement']:.4f} vs fp32 on {quality['positions']} positions of "
        f"{where} is below spec.quantization.minAgreement={min_agreement:g} (top-5 overlap "
        f"{quality['top5Overlap']:.4f}, max |Δlogit| {quality['maxAbsLogitDelta']:.3g}); use a milder "
        f"spec.quantization.mode ({milder}) or lower spec.quantization.minAgreement"
    )
