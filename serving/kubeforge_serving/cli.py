"""Subcommands of `python -m kubeforge_serving` (argparse; heavy imports stay inside each command)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import ServingError


def export_main(argv: list[str] | None = None) -> int:
    """Export a model dir to ONNX (+ KV graph) with a parity report; exit 1 over the threshold."""
    p = argparse.ArgumentParser(prog="kubeforge_serving export", description=export_main.__doc__)
    p.add_argument("--model", required=True, help="HF model directory (full model or PEFT adapter)")
    p.add_argument("--out", required=True, help="output directory (model.onnx, export-report.json)")
    p.add_argument("--task", default="auto", choices=["auto", "causal-lm", "sequence-classification"])
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--kv-cache", action="store_true")
    p.add_argument("--max-logit-diff", type=float, default=1e-3)
    a = p.parse_args(argv)
    from .export import export_with_parity

    rep = export_with_parity(a.model, a.out, a.task, a.opset, a.kv_cache, a.max_logit_diff)
    print(json.dumps(rep, indent=2))
    return 0


def quantize_main(argv: list[str] | None = None) -> int:
    """Quantize an export directory's model.onnx; parity vs the PyTorch fp32 logits saved by export."""
    p = argparse.ArgumentParser(prog="kubeforge_serving quantize", description=quantize_main.__doc__)
    p.add_argument("--export-dir", required=True)
    p.add_argument(
        "--mode", required=True, choices=["fp16", "int8-dynamic", "int8-static", "int8-weight-only", "tensorrt"]
    )
    p.add_argument("--calibration", help="Dataset artifact dir (train/validation/test.parquet) for int8-static")
    p.add_argument("--split", default="train")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--tokenizer", help="tokenizer dir (int8-static)")
    p.add_argument("--max-logit-diff", type=float)
    a = p.parse_args(argv)
    from .data import load_texts
    from .quantize import quantize

    texts = load_texts(a.calibration, a.split, a.samples) if a.calibration else None
    rep = quantize(a.export_dir, a.mode, texts, a.tokenizer, a.samples, a.max_logit_diff)
    print(json.dumps(rep, indent=2))
    return 0


def repository_main(argv: list[str] | None = None) -> int:
    """Write a Triton model repository for an ONNX file (python, onnxruntime, tensorrt, tensorrt_plan form)."""
    p = argparse.ArgumentParser(prog="kubeforge_serving repository", description=repository_main.__doc__)
    p.add_argument("--onnx", required=True)
    p.add_argument("--kv-onnx")
    p.add_argument("--repository", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--form", default="python", choices=["python", "onnxruntime", "tensorrt", "tensorrt_plan"])
    p.add_argument("--tokenizer")
    p.add_argument("--task", default="causal-lm")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--no-dynamic-batching", action="store_true")
    p.add_argument("--queue-delay-us", type=int, default=1000)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--version-policy", default="latest", help="latest, all, or comma-separated versions")
    p.add_argument("--pad-token-id", type=int, default=0)
    p.add_argument(
        "--max-length",
        type=int,
        help="longest sequence for tensorrt_plan's TensorRT profiles (default: maxLength of the "
        "export-report.json beside --onnx)",
    )
    a = p.parse_args(argv)
    from .export import REPORT_FILE
    from .repository import ModelSettings, build_repository

    policy: str | list[int] = a.version_policy
    if a.version_policy not in ("latest", "all"):
        policy = [int(v) for v in a.version_policy.split(",")]
    max_length = a.max_length
    report = Path(a.onnx).with_name(REPORT_FILE)
    if max_length is None and report.is_file():
        max_length = json.loads(report.read_text()).get("maxLength")
    s = ModelSettings(
        form=a.form,
        max_batch_size=a.max_batch_size,
        dynamic_batching=not a.no_dynamic_batching,
        max_queue_delay_us=a.queue_delay_us,
        instances=a.instances,
        gpu=a.gpu,
        version_policy=policy,
        pad_token_id=a.pad_token_id,
        max_length=max_length,
    )
    out = build_repository(a.repository, a.name, a.onnx, s, a.version, a.kv_onnx, a.tokenizer, a.task)
    print(json.dumps(out, indent=2))
    return 0


def smoke(
    repository: str | Path,
    model: str,
    text: str = "hello",
    url: str | None = None,
    protocol: str = "grpc",
    max_new_tokens: int = 4,
) -> dict[str, Any]:
    """Send one request (starting a local Triton when no `url`), return what came back.

    Causal LMs answer with a short greedy generation, classifiers with a score.
    """
    from .client import TritonLMClient
    from .repository import META_FILE
    from .triton import TritonServer

    repo = Path(repository)
    meta = json.loads((repo / model / META_FILE).read_text()) if (repo / model / META_FILE).is_file() else {}

    def ask(endpoint: str) -> dict[str, Any]:
        c = TritonLMClient.from_repository(repo, model, endpoint, protocol)  # type: ignore[arg-type]
        try:
            if meta.get("task") == "sequence-classification":
                return {"model": model, "score": c.scores([text])[0]}
            logits = c.text_logits([text])
            gen = c.generate(text, max_new_tokens=max_new_tokens, min_new_tokens=1)
            return {"model": model, "logitsShape": list(logits.shape), "generated": gen}
        finally:
            c.close()

    if url:
        return ask(url)
    models = [model] + ([meta["kvModel"]] if meta.get("kvModel") else [])
    with TritonServer(repo, models) as server:
        return ask(server.grpc_url if protocol == "grpc" else server.http_url)


def smoke_main(argv: list[str] | None = None) -> int:
    """Send one request to a converted model (starts a local Triton unless --url is given)."""
    p = argparse.ArgumentParser(prog="kubeforge_serving smoke", description=smoke_main.__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repository", help="Triton model repository")
    src.add_argument("--output", help="convert stage output dir (uses repository-python when present)")
    p.add_argument("--model", help="model name (default: the only non-KV model)")
    p.add_argument("--text", default="hello")
    p.add_argument("--url", help="existing server (host:port)")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    a = p.parse_args(argv)
    if a.output:
        out = Path(a.output)
        repo = out / "repository-python" if (out / "repository-python").is_dir() else out / "repository"
    else:
        repo = Path(a.repository)
    model = a.model
    if model is None:
        names = sorted(d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file() and not d.name.endswith("_kv"))
        if len(names) != 1:
            raise ServingError(f"{repo} holds models {names}; pass --model", reason="InvalidArgs")
        model = names[0]
    print(json.dumps(smoke(repo, model, a.text, a.url, a.protocol)))
    return 0


def bench_main(argv: list[str] | None = None) -> int:
    from .bench import main

    return main(argv)


def _commands() -> dict[str, Callable[[list[str] | None], int]]:
    from .convert import convert_main
    from .triton import install_main, serve_main

    return {
        "export": export_main,
        "quantize": quantize_main,
        "repository": repository_main,
        "serve": serve_main,
        "smoke": smoke_main,
        "bench": bench_main,
        "convert": convert_main,
        "install-triton": install_main,
    }


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmds = _commands()
    if not args or args[0] not in cmds:
        print(f"usage: python -m kubeforge_serving {{{','.join(cmds)}}} ...", file=sys.stderr)
        return 2
    try:
        return cmds[args[0]](args[1:])
    except ServingError as exc:
        print(f"error ({exc.reason}): {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
