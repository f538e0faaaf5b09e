"""Serving benchmark: PyTorch eager vs ORT fp32/fp16 and the three int8 modes in-process vs Triton gRPC fp32/int8.

Each backend is timed in its own subprocess: live ORT sessions spin threads and distort torch
timings in the same process. Parity (max |logit diff|, argmax agreement, top-5 overlap) is against
PyTorch eager on the same batch-8 inputs (random tokens: the model is random-init and has no
tokenizer). int8 modes: `int8` dynamic, `int8static` (calibrated on 16 random-token sequences),
`int8wo` weight-only (MatMulNBits, 8 bits). `python bench/serving.py` or `python -m kubeforge_serving bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .parity import logit_stats

BACKENDS = ["torch", "ort-fp32", "ort-int8", "ort-int8static", "ort-int8wo", "ort-fp16", "triton-fp32", "triton-int8"]
ONNX_FILES = {
    "fp32": "model.onnx",
    "int8": "model.int8-dynamic.onnx",
    "int8static": "model.int8-static.onnx",
    "int8wo": "model.int8-weight-only.onnx",
    "fp16": "model.fp16.onnx",
}


def build(work: Path, hidden: int, layers: int, vocab: int) -> dict[str, Any]:
    """Random-init LLaMA (~20M params at the defaults), exported and quantized once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .export import export_with_parity, file_size
    from .quantize import quantize, quantize_int8_static
    from .repository import ModelSettings, build_repository

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(work / "model"))
    exp = export_with_parity(work / "model", work / "onnx", max_logit_diff=1e-2)
    sizes = {"fp32": exp["fp32SizeBytes"]}
    for mode, key in (("int8-dynamic", "int8"), ("int8-weight-only", "int8wo"), ("fp16", "fp16")):
        sizes[key] = quantize(work / "onnx", mode)["sizeBytes"]
    calib = [_inputs(1, 64, vocab, seed=100 + i) for i in range(16)]
    quantize_int8_static(work / "onnx" / "model.onnx", work / "onnx" / ONNX_FILES["int8static"], calib)
    sizes["int8static"] = file_size(work / "onnx" / ONNX_FILES["int8static"])
    for key in ("fp32", "int8"):
        build_repository(
            work / "repo",
            f"bench_{key}",
            work / "onnx" / ONNX_FILES[key],
            ModelSettings(max_batch_size=32, max_queue_delay_us=0, intra_op_threads=2),
        )
    return {"parameters": exp["parameters"], "sizes": sizes}


def _inputs(batch: int, seq: int, vocab: int, seed: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch if seed is None else seed)
    ids = rng.integers(3, vocab, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def worker(
    backend: str, work: Path, batches: list[int], seq: int, vocab: int, iters: int, threads: int
) -> dict[str, Any]:
    """Time one backend; returns latencies per batch and the batch-8 logits path."""
    run: Any
    cleanup: Any = None
    if backend == "torch":
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        model: Any = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32)
        model.eval()

        def run(x: dict[str, np.ndarray]) -> np.ndarray:
            with torch.no_grad():
                return np.asarray(model(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy())
    elif backend.startswith("ort-"):
        from .export import ort_session

        sess = ort_session(work / "onnx" / ONNX_FILES[backend.removeprefix("ort-")], threads=threads)

        def run(x: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(sess.run(["logits"], x)[0])
    else:
        from .client import TritonLMClient
        from .triton import TritonServer

        name = f"bench_{backend.split('-')[1]}"
        server = TritonServer(work / "repo", [name], log_path=work / f"{backend}.log").start()
        client = TritonLMClient(server.grpc_url, name, "grpc", timeout=300)

        def run(x: dict[str, np.ndarray]) -> np.ndarray:
            return client.logits(x["input_ids"], x["attention_mask"])

        def cleanup() -> None:
            client.close()
            server.stop()

    out: dict[str, Any] = {"backend": backend, "batches": {}}
    try:
        for b in batches:
            x = _inputs(b, seq, vocab)
            n = max(3, iters * 8 // max(b, 8))
            for _ in range(2):
                logits = run(x)
            lat = []
            for _ in range(n):
                t = time.perf_counter()
                logits = run(x)
                lat.append(time.perf_counter() - t)
            out["batches"][str(b)] = lat
            if b == 8:
                np.save(work / f"logits-{backend}.npy", logits.astype(np.float32))
    finally:
        if cleanup is not None:
            cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubeforge_serving bench", description=__doc__)
    p.add_argument("--work", help="work dir (default: a temp dir)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--iters", type=int, default=12, help="timed iterations at batch <= 8 (fewer above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--json-out", help="also write the JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    if a.worker:
        res = worker(a.worker, Path(a.work), batches, a.seq, a.vocab, a.iters, a.threads)
        print("BENCH " + json.dumps(res))
        return 0
    work = Path(a.work or tempfile.mkdtemp(prefix="kf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    info = build(work, a.hidden, a.layers, a.vocab)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    rows: list[dict[str, Any]] = []
    for backend in a.backends.split(","):
        cmd = [
            sys.executable,
            "-m",
            "kubeforge_serving.bench",
            "--worker",
            backend,
            "--work",
            str(work),
            "--batches",
            a.batches,
            "--seq",
            str(a.seq),
            "--iters",
            str(a.iters),
            "--threads",
            str(a.threads),
            "--vocab",
            str(a.vocab),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{backend} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        res = json.loads(line[6:])
        ref = np.load(work / "logits-torch.npy") if (work / "logits-torch.npy").is_file() else None
        got = np.load(work / f"logits-{backend}.npy") if (work / f"logits-{backend}.npy").is_file() else None
        diff = agree = top5 = None
        if ref is not None and got is not None:
            stats = logit_stats(ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1]))
            diff, agree, top5 = stats["maxAbsLogitDelta"], stats["agreement"], stats["top5Overlap"]
        prec = "fp32" if backend == "torch" else backend.split("-", 1)[1]
        for b, lat in res["batches"].items():
            arr = np.asarray(lat) * 1000
            rows.append(
                {
                    "backend": backend,
                    "batch": int(b),
                    "p50_ms": float(np.percentile(arr, 50)),
                    "p95_ms": float(np.percentile(arr, 95)),
                    "seq_per_s": float(int(b) * 1000 / arr.mean()),
                    "size_mb": info["sizes"][prec] / 1e6,
                    "max_logit_diff": diff,
                    "argmax_agreement": agree,
                    "top5_overlap": top5,
                    "iters": len(lat),
                }
            )
    print(
        f"model: LLaMA {info['parameters'] / 1e6:.1f}M params, seq {a.seq}, {a.threads} threads; "
        f"total {time.monotonic() - t0:.0f}s"
    )
    head = (
        f"{'backend':<16}{'batch':>6}{'p50 ms':>10}{'p95 ms':>10}{'seq/s':>9}{'size MB':>9}{'max|Δ|':>10}"
        f"{'argmax':>8}{'top5':>8}"
    )
    print(head)
    for r in rows:
        d = "-" if r["max_logit_diff"] is None else f"{r['max_logit_diff']:.2e}"
        g = "-" if r["argmax_agreement"] is None else f"{r['argmax_agreement']:.3f}"
        t = "-" if r["top5_overlap"] is None else f"{r['top5_overlap']:.3f}"
        print(
            f"{r['backend']:<16}{r['batch']:>6}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['seq_per_s']:>9.1f}"
            f"{r['size_mb']:>9.1f}{d:>10}{g:>8}{t:>8}"
        )
    body = {"parameters": info["parameters"], "seq": a.seq, "threads": a.threads, "rows": rows}
    print(json.dumps(body))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
