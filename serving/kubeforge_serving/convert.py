"""The ModelDeployment stage: export → quantize → Triton repository, reported as a StageResult.

`python -m kubeforge_serving convert --config config.yaml` (the operator's Job and the local runner
run the same command). Output layout under `output_uri`:

    onnx/                      model.onnx, model_kv.onnx, quantized files, parity reports
    repository/                Triton repository in spec.backend's form (the artifact)
    repository-python/         the same model for a CPU-only Triton (python backend), when spec.backend differs
    conversion-report.json     export + quantization + repository reports
    result.json, progress.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kubeforge.api.v1alpha1.status import Artifact, Progress
from kubeforge.stage import TERMINATION_LOG, StageConfig, StageResult, local_path

from . import ServingError
from .repository import ModelSettings, build_repository, check_form

REPORT_FILE = "conversion-report.json"
BACKEND_FORMS = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "python": "python"}


def digest_dir(root: Path) -> tuple[str, int]:
    """`sha256:` over relative names and contents (same scheme as the trainer stages), and total bytes."""
    h = hashlib.sha256()
    size = 0
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_result(config: StageConfig, result: StageResult) -> None:
    """result.json and, inside a pod, the termination message."""
    if config.result_path:
        _write(local_path(config.result_path), json.dumps(result.to_wire(), indent=2, sort_keys=True))
    term = Path(os.environ.get("KUBEFORGE_TERMINATION_LOG", TERMINATION_LOG))
    if term.parent.is_dir() and (term.exists() or os.environ.get("KUBEFORGE_TERMINATION_LOG")):
        with contextlib.suppress(OSError):
            term.write_text(result.termination_message())


def _progress(config: StageConfig, step: int, total: int, what: str) -> None:
    if config.progress_path:
        body = Progress(step=step, total_steps=total, percent=f"{100 * step // total}% {what}").to_wire()
        with contextlib.suppress(OSError):
            _write(local_path(config.progress_path), json.dumps(body))


def _tokenizer_dir(spec: Any, model_dir: Path) -> Path:
    """spec.tokenizer.uri, else the model dir, else (for adapters) the base model dir."""
    if spec.tokenizer.uri:
        return local_path(spec.tokenizer.uri)
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file():
        return model_dir
    cfg = model_dir / "adapter_config.json"
    if cfg.is_file():
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
        if base and Path(base).is_dir():
            return Path(base)
    raise ServingError(f"no tokenizer in {model_dir}; set spec.tokenizer.uri", reason="TokenizerMissing")


def _quality(config: StageConfig, work: Path, onnx_file: str, mode: str, task: str, tok_dir: Path) -> dict[str, Any]:
    """status.quantization: quantized vs fp32 ONNX on the `heldOut` input's text, else on random tokens."""
    from .parity import held_out, measure

    inp = config.inputs.get("heldOut")
    ds_dir: Path | None = None
    note = None
    if inp is not None:
        try:
            ds_dir = local_path(inp.uri)
        except ValueError:
            note = f"held-out Dataset/{inp.name} at {inp.uri} has no local path"
    label = f"Dataset/{inp.name}" if inp is not None else ""
    feeds, dataset, why = held_out(ds_dir, inp.split if inp is not None else None, label, tok_dir)
    return measure(work, onnx_file, mode, task, feeds, dataset, note or why)


def _quality_metrics(quality: dict[str, Any] | None) -> dict[str, float]:
    """The three numbers as stage metrics (`quantAgreement`, `quantTop5Overlap`, `quantMaxAbsLogitDelta`)."""
    if quality is None:
        return {}
    return {f"quant{k[0].upper()}{k[1:]}": float(quality[k]) for k in ("agreement", "top5Overlap", "maxAbsLogitDelta")}


def _summary(quality: dict[str, Any]) -> str:
    where = f"held-out {quality['dataset']}" if quality["source"] == "held-out" else "random tokens"
    return (
        f"quantized vs fp32 ONNX on {quality['positions']} positions of {where}: agreement {quality['agreement']:.4f}, "
        f"top-5 overlap {quality['top5Overlap']:.4f}, max|Δlogit| {quality['maxAbsLogitDelta']:.3g}"
    )


def run_convert(config: StageConfig) -> StageResult:
    """Do the conversion; raises ServingError on expected failures."""
    from .data import load_texts
    from .export import check_opset, export_with_parity
    from .quantize import quantize

    res: Any = config.typed()
    if res.kind != "ModelDeployment":
        raise ServingError(f"convert runs ModelDeployments, got {res.kind}", reason="InvalidConfig")
    spec = res.spec
    check_opset(spec.export.opset)  # fail fast, before loading torch weights
    check_form(BACKEND_FORMS[spec.backend], spec.resources.gpu > 0)  # e.g. tensorrt without a GPU
    model_in = config.inputs.get("model")
    if model_in is None:
        raise ServingError("no resolved `model` input; set spec.model.uri or spec.model.ref", reason="ModelNotFound")
    model_dir = local_path(model_in.uri)
    out = local_path(config.output_uri)
    work = out / "onnx"
    total = 4
    _progress(config, 0, total, "export")
    exp = export_with_parity(
        model_dir,
        work,
        task=spec.export.task,
        opset=spec.export.opset,
        kv_cache=spec.export.kv_cache,
        max_logit_diff=spec.export.max_logit_diff,
    )
    _progress(config, 1, total, "quantize")
    tok_dir = _tokenizer_dir(spec, model_dir)
    texts = None
    q = spec.quantization
    if q.mode == "int8-static":
        cal = config.inputs.get("calibration")
        if cal is None:
            raise ServingError(
                "int8-static needs the resolved `calibration` input (spec.quantization.calibration)",
                reason="CalibrationDataMissing",
            )
        texts = load_texts(
            local_path(cal.uri), q.calibration.split if q.calibration else "train", q.calibration_samples
        )
    qrep = quantize(
        work,
        q.mode,
        calibration_texts=texts,
        tokenizer_dir=tok_dir,
        samples=q.calibration_samples,
        max_logit_diff=q.max_logit_diff,
    )
    quality: dict[str, Any] | None = None
    if q.mode != "none" and not qrep.get("skipped"):
        from .parity import below_gate

        quality = _quality(config, work, str(qrep["onnx"]), q.mode, exp["task"], tok_dir)
        if q.min_agreement is not None:
            quality["minAgreement"] = q.min_agreement
        qrep["parity"] = quality
        problem = below_gate(quality, q.min_agreement)
        if problem is not None:
            _write(out / REPORT_FILE, json.dumps({"export": exp, "quantization": qrep}, indent=2, default=str))
            return StageResult(
                succeeded=False,
                reason="QuantizationQualityBelowGate",
                message=problem,
                lineage=[config.inputs[k].lineage() for k in sorted(config.inputs)],
                metrics=_quality_metrics(quality),
                details={"quantization": quality},
            )
    _progress(config, 2, total, "repository")
    name = str(res.metadata.get("name") or "model")
    version = int(res.metadata.get("generation") or 1)
    tri = spec.triton
    settings = ModelSettings(
        form=BACKEND_FORMS[spec.backend],  # type: ignore[arg-type]
        max_batch_size=tri.max_batch_size,
        dynamic_batching=tri.dynamic_batching.enabled,
        max_queue_delay_us=tri.dynamic_batching.max_queue_delay_microseconds,
        preferred_batch_sizes=tri.dynamic_batching.preferred_batch_sizes,
        instances=tri.instances,
        gpu=spec.resources.gpu > 0,
        pad_token_id=int(exp["padTokenId"]),
        max_length=exp.get("maxLength"),
    )
    onnx_file = qrep["onnx"]
    kv_file = qrep.get("kv", {}).get("onnx") if exp.get("kv") else None
    conversion = {
        "fp32SizeBytes": float(exp["fp32SizeBytes"]),
        "sizeBytes": float(qrep["sizeBytes"]),
        "maxLogitDiff": float(qrep["maxLogitDiff"]),
        "argmaxAgreement": float(qrep["argmaxAgreement"]),
        "exportMaxLogitDiff": float(exp["maxLogitDiff"]),
    }
    repo_dir = out / "repository"
    repo = build_repository(
        repo_dir,
        name,
        onnx_file,
        settings,
        version=version,
        kv_onnx_path=kv_file,
        tokenizer_dir=tok_dir,
        task=exp["task"],
        report=conversion,
    )
    repos = {"repository": str(repo_dir)}
    if settings.form != "python":
        py = ModelSettings(**{**settings.__dict__, "form": "python", "gpu": False})
        build_repository(
            out / "repository-python",
            name,
            onnx_file,
            py,
            version=version,
            kv_onnx_path=kv_file,
            tokenizer_dir=tok_dir,
            task=exp["task"],
            report=conversion,
        )
        repos["pythonRepository"] = str(out / "repository-python")
    _progress(config, 3, total, "digest")
    digest, size = digest_dir(repo_dir)
    uri = config.output_uri.rstrip("/") + "/repository"
    report = {"export": exp, "quantization": qrep, "repository": repo, **repos, "digest": digest}
    _write(out / REPORT_FILE, json.dumps(report, indent=2, default=str))
    _progress(config, total, total, "done")
    msg = (
        f"{exp['task']} → {q.mode} ({spec.backend}): {int(conversion['sizeBytes'])} bytes, "
        f"max|Δlogit| {conversion['maxLogitDiff']:.3g}, argmax agreement {conversion['argmaxAgreement']:.3f}"
    )
    if qrep.get("skipped"):
        msg += f"; {qrep['message']}"
    if quality is not None:
        msg += f"; {_summary(quality)}"
    return StageResult(
        succeeded=True,
        reason="Converted",
        message=msg,
        artifact=Artifact(uri=uri, digest=digest, size_bytes=size),
        lineage=[config.inputs[k].lineage() for k in sorted(config.inputs)],
        metrics={**conversion, **_quality_metrics(quality)},
        details={
            "modelRepository": uri,
            "conversion": conversion,
            **({"quantization": quality} if quality is not None else {}),
            "modelName": name,
            "modelVersion": str(version),
            "models": repo["models"],
            "reportUri": config.output_uri.rstrip("/") + "/" + REPORT_FILE,
        },
    )


def convert_main(argv: list[str] | None = None) -> int:
    """Stage entrypoint: always writes a StageResult; exit 1 on failure."""
    p = argparse.ArgumentParser(prog="kubeforge_serving convert", description="ModelDeployment conversion stage")
    p.add_argument("--config", required=True, help="StageConfig YAML")
    a = p.parse_args(argv)
    config = StageConfig.load(a.config)
    t0 = time.monotonic()
    try:
        result = run_convert(config)
    except ServingError as exc:
        result = StageResult(succeeded=False, reason=exc.reason, message=str(exc).splitlines()[0])
    except Exception as exc:  # unexpected: keep the stage contract (a result and a non-zero exit)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = StageResult(succeeded=False, reason="ConversionFailed", message=f"{type(exc).__name__}: {first}")
    if result.lineage is None:
        result.lineage = [config.inputs[k].lineage() for k in sorted(config.inputs)]
    write_result(config, result)
    status = "succeeded" if result.succeeded else "failed"
    print(f"convert {status} in {time.monotonic() - t0:.1f}s: {result.message}", file=sys.stderr)
    return 0 if result.succeeded else 1
