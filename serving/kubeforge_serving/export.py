"""Export a causal LM or a sequence classifier (reward model) to ONNX and check parity with PyTorch.

Uses the TorchScript exporter (`dynamo=False`): ~1 s on small models, one self-contained file, and
it traces the KV-cache graph through `DynamicCache` (the dynamo exporter took 10-20 s and wrote an
invalid Split node at opset 17 on this stack).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import ServingError

if TYPE_CHECKING:
    import torch

Task = Literal["causal-lm", "sequence-classification"]
MIN_OPSET = 14
MAX_OPSET = 20  # torch.onnx TorchScript exporter's ceiling (torch.onnx._constants)
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
INPUT_NAMES = ["input_ids", "attention_mask"]
REFERENCE_FILE = "parity-reference.npz"
REPORT_FILE = "export-report.json"


def check_opset(opset: int) -> None:
    """Reject opsets the exporter cannot write, naming the field and the range."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ServingError(
            f"spec.export.opset={opset} is not supported by the ONNX exporter: use {MIN_OPSET}..{MAX_OPSET} "
            "(17 or 18 recommended)",
            reason="UnsupportedOpset",
        )


def _check_weights(model_dir: Path) -> bool:
    """True when the directory holds a PEFT adapter; raises when it holds no weights at all."""
    if not model_dir.is_dir():
        raise ServingError(f"model directory {model_dir} does not exist; check spec.model", reason="ModelNotFound")
    if (model_dir / "adapter_config.json").is_file():
        if not any((model_dir / w).is_file() for w in ADAPTER_WEIGHTS):
            raise ServingError(
                f"{model_dir} has adapter_config.json but no adapter weights ({', '.join(ADAPTER_WEIGHTS)})",
                reason="ModelWeightsMissing",
            )
        return True
    if not (model_dir / "config.json").is_file():
        raise ServingError(
            f"{model_dir} has no config.json; spec.model must point at a Hugging Face model directory",
            reason="ModelWeightsMissing",
        )
    if not any((model_dir / w).is_file() for w in WEIGHT_FILES):
        raise ServingError(
            f"{model_dir} has no weights ({', '.join(WEIGHT_FILES[:2])}); point spec.model at a finished "
            "training output",
            reason="ModelWeightsMissing",
        )
    return False


def detect_task(config: Any, task: str = "auto") -> Task:
    """`auto` → the head named in config.architectures."""
    if task in ("causal-lm", "sequence-classification"):
        return task  # type: ignore[return-value]
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "sequence-classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    raise ServingError(
        f"cannot infer the model head from architectures={archs}; set spec.export.task to causal-lm or "
        "sequence-classification",
        reason="UnknownTask",
    )


def _adapter_head(path: Path) -> dict[str, Any]:
    """Head kwargs (`num_labels`, `id2label`) a Kubeforge classifier adapter's `kubeforge-model.json` names."""
    manifest = path / "kubeforge-model.json"
    if not manifest.is_file():
        return {}
    body = json.loads(manifest.read_text())
    if not body.get("numLabels"):
        return {}
    out: dict[str, Any] = {"num_labels": int(body["numLabels"])}
    labels = body.get("labels") or []
    if labels:
        out["id2label"] = {i: str(v) for i, v in enumerate(labels)}
        out["label2id"] = {str(v): i for i, v in enumerate(labels)}
    return out


def load_model(model_dir: str | Path, task: str = "auto") -> tuple[torch.nn.Module, Task]:
    """Load a full model, or a PEFT adapter merged into its base (merge_and_unload), in fp32 eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(model_dir)
    is_adapter = _check_weights(path)
    if is_adapter:
        from peft import PeftConfig, PeftModel

        pcfg = PeftConfig.from_pretrained(str(path))
        base = str(pcfg.base_model_name_or_path or "")
        if not base or not Path(base).is_dir():
            raise ServingError(
                f"adapter in {path} names base model {base!r}, which is not a local directory; "
                "copy the base model beside it or merge the adapter before deploying",
                reason="ModelNotFound",
            )
        config = AutoConfig.from_pretrained(base)
        if task == "auto":
            task = "sequence-classification" if str(pcfg.task_type) == "SEQ_CLS" else detect_task(config)
        resolved = detect_task(config, task)
        cls = AutoModelForSequenceClassification if resolved == "sequence-classification" else AutoModelForCausalLM
        kwargs: dict[str, Any] = {"num_labels": 1} if resolved == "sequence-classification" else {}
        if resolved == "sequence-classification":
            kwargs = _adapter_head(path) or kwargs  # a classifier adapter: its label count, else a reward head
        base_model = cls.from_pretrained(base, dtype=torch.float32, **kwargs)
        model = PeftModel.from_pretrained(base_model, str(path)).merge_and_unload()
    else:
        config = AutoConfig.from_pretrained(str(path))
        resolved = detect_task(config, task)
        if resolved == "sequence-classification":
            labels = getattr(config, "num_labels", 1) or 1
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), dtype=torch.float32, num_labels=labels
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if resolved == "sequence-classification" and model.config.pad_token_id is None:
        # Batched scoring finds the last real token by pad id; fall back to eos (what TRL does).
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    model.config.use_cache = False
    return model.eval(), resolved


def pad_token_id(model: torch.nn.Module) -> int:
    """Pad id the server uses when it batches requests of different lengths."""
    cfg: Any = model.config
    pid = cfg.pad_token_id
    if pid is None:
        eos = cfg.eos_token_id
        pid = eos[0] if isinstance(eos, list) else eos
    return int(pid or 0)


def max_length(model: torch.nn.Module) -> int | None:
    """The model's longest sequence (position embeddings), if its config says."""
    cfg: Any = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else None


def _cache_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    cfg: Any = model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return int(cfg.num_hidden_layers), kv_heads, head_dim


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    """ONNX names of the past (inputs) and present (outputs) cache tensors."""
    past = [f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    present = [f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    return past, present


def _plain_wrapper(model: torch.nn.Module) -> torch.nn.Module:
    """(input_ids, attention_mask) → logits only; keeps extra forward kwargs out of the graph."""
    import torch

    class PlainWrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return PlainWrapper(model).eval()


def _kv_wrapper(model: torch.nn.Module) -> torch.nn.Module:
    """Flat past/present tensors around HF's DynamicCache (ONNX has no cache objects)."""
    import torch
    from transformers.cache_utils import DynamicCache

    class KVWrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *flat: Any) -> tuple[Any, ...]:
            cfg: Any = self.inner.config
            cache = DynamicCache(config=cfg)
            for i in range(len(flat) // 2):
                cache.update(flat[2 * i], flat[2 * i + 1], i)
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            res = [out.logits]
            for layer in out.past_key_values.layers:
                res += [layer.keys, layer.values]
            return tuple(res)

    return KVWrapper(model).eval()


def export_onnx(model: torch.nn.Module, task: Task, out: str | Path, opset: int = 17, kv_cache: bool = False) -> Path:
    """Write `out` with dynamic batch/sequence axes (and past length with `kv_cache`)."""
    import torch

    check_opset(opset)
    if kv_cache and task != "causal-lm":
        raise ServingError(
            "spec.export.kvCache applies to causal LMs only; unset it for sequence-classification",
            reason="InvalidExportSpec",
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg: Any = model.config
    vocab = int(cfg.vocab_size)
    gen = torch.Generator().manual_seed(0)
    batch, seq = 2, 8
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, -2:] = 0  # a padded row keeps the general masking path in the trace
    if task == "causal-lm":
        logits_axes = {0: "batch", 1: "sequence"}
    else:
        ids[1, -2:] = pad_token_id(model)
        logits_axes = {0: "batch"}
    try:
        with torch.no_grad():
            if not kv_cache:
                torch.onnx.export(
                    _plain_wrapper(model),
                    (ids, mask),
                    str(out),
                    input_names=INPUT_NAMES,
                    output_names=["logits"],
                    dynamic_axes={
                        "input_ids": {0: "batch", 1: "sequence"},
                        "attention_mask": {0: "batch", 1: "sequence"},
                        "logits": logits_axes,
                    },
                    opset_version=opset,
                    dynamo=False,
                    do_constant_folding=True,
                )
            else:
                layers, kv_heads, head_dim = _cache_shape(model)
                past_len = 3
                past_names, present_names = kv_names(layers)
                flat = [torch.randn(batch, kv_heads, past_len, head_dim, generator=gen) for _ in past_names]
                full_mask = torch.ones(batch, past_len + seq, dtype=torch.long)
                full_mask[1, :1] = 0
                pos = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
                axes: dict[str, dict[int, str]] = {
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "total_sequence"},
                    "position_ids": {0: "batch", 1: "sequence"},
                    "logits": {0: "batch", 1: "sequence"},
                }
                axes.update({n: {0: "batch", 2: "past_sequence"} for n in past_names})
                axes.update({n: {0: "batch", 2: "total_sequence"} for n in present_names})
                torch.onnx.export(
                    _kv_wrapper(model),
                    (ids, full_mask, pos, *flat),
                    str(out),
                    input_names=[*INPUT_NAMES, "position_ids", *past_names],
                    output_names=["logits", *present_names],
                    dynamic_axes=axes,
                    opset_version=opset,
                    dynamo=False,
                    do_constant_folding=True,
                )
    except ServingError:
        raise
    except Exception as exc:  # exporter errors are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServingError(f"ONNX export at opset {opset} failed: {first}", reason="ExportFailed") from exc
    return out


def file_size(path: str | Path) -> int:
    """Model size on disk, including an external-data file beside it."""
    p = Path(path)
    extra = p.with_name(p.name + ".data")
    return p.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


# ---------------------------------------------------------------- parity


def parity_inputs(
    model: torch.nn.Module, task: Task, batch: int = 4, seq: int = 16, seed: int = 1234
) -> dict[str, np.ndarray]:
    """Fixed token ids with one right-padded row (so padding handling is part of the check)."""
    rng = np.random.default_rng(seed)
    cfg: Any = model.config
    vocab = int(cfg.vocab_size)
    ids = rng.integers(3, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[-1, seq // 2 :] = 0
    ids[-1, seq // 2 :] = pad_token_id(model)
    return {"input_ids": ids, "attention_mask": mask}


def torch_logits(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Reference fp32 logits."""
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return np.asarray(out.logits.float().numpy())


def ort_session(path: str | Path, threads: int = 0, providers: list[str] | None = None) -> Any:
    """An ORT session that does not spin its threads (spinning slows everything else on small CPUs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def ort_logits(path: str | Path, inputs: dict[str, np.ndarray], providers: list[str] | None = None) -> np.ndarray:
    """Logits from the ONNX file for the same inputs."""
    sess = ort_session(path, providers=providers)
    names = {i.name for i in sess.get_inputs()}
    return np.asarray(sess.run(["logits"], {k: v for k, v in inputs.items() if k in names})[0], dtype=np.float32)


def compare(ref: np.ndarray, got: np.ndarray, mask: np.ndarray | None, task: Task) -> dict[str, float]:
    """Max |logit diff| and argmax agreement over real (unpadded) positions."""
    ref = ref.astype(np.float32)
    got = got.astype(np.float32)
    if ref.shape != got.shape:
        raise ServingError(f"ONNX logits shape {got.shape} != PyTorch {ref.shape}", reason="ParityFailed")
    if task == "causal-lm" and mask is not None:
        keep = mask.astype(bool)
        ref, got = ref[keep], got[keep]
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    if not np.isfinite(got).all():
        diff = float("inf")
    agree = float(np.mean(ref.argmax(-1) == got.argmax(-1))) if ref.size else 1.0
    return {"maxLogitDiff": diff, "argmaxAgreement": agree}


def kv_parity(model: torch.nn.Module, kv_path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Prompt (empty past) then one decode step through the KV graph, against full PyTorch forwards."""
    sess = ort_session(kv_path)
    layers, kv_heads, head_dim = _cache_shape(model)
    past_names, _ = kv_names(layers)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    batch = ids.shape[0]
    feeds: dict[str, np.ndarray] = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": np.clip(mask.cumsum(-1) - 1, 0, None).astype(np.int64),
    }
    feeds.update({n: np.zeros((batch, kv_heads, 0, head_dim), np.float32) for n in past_names})
    outs = sess.run(None, feeds)
    first = compare(torch_logits(model, inputs), outs[0], mask, "causal-lm")
    nxt = np.full((batch, 1), 5, dtype=np.int64)
    full_mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
    step = {
        "input_ids": nxt,
        "attention_mask": full_mask,
        "position_ids": (full_mask.sum(-1, keepdims=True) - 1).astype(np.int64),
    }
    step.update(dict(zip(past_names, outs[1:], strict=True)))
    got = sess.run(["logits"], step)[0][:, -1]
    full = {
        "input_ids": np.concatenate([ids, nxt], axis=1),
        "attention_mask": full_mask,
        "position_ids": np.clip(full_mask.cumsum(-1) - 1, 0, None).astype(np.int64),
    }
    ref_full = torch_logits(model, full)[:, -1]
    second = compare(ref_full, got, None, "causal-lm")
    return {
        "maxLogitDiff": max(first["maxLogitDiff"], second["maxLogitDiff"]),
        "argmaxAgreement": min(first["argmaxAgreement"], second["argmaxAgreement"]),
    }


def export_with_parity(
    model_dir: str | Path,
    out_dir: str | Path,
    task: str = "auto",
    opset: int = 17,
    kv_cache: bool = False,
    max_logit_diff: float = 1e-3,
) -> dict[str, Any]:
    """Export `model.onnx` (and `model_kv.onnx`), write `export-report.json`, fail over the threshold."""
    check_opset(opset)
    out = Path(out_dir)
    t0 = time.monotonic()
    model, resolved = load_model(model_dir, task)
    onnx_path = export_onnx(model, resolved, out / "model.onnx", opset=opset)
    inputs = parity_inputs(model, resolved)
    ref = torch_logits(model, inputs)
    # Quantization compares against the same PyTorch logits without reloading torch.
    np.savez(out / REFERENCE_FILE, logits=ref, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    par = compare(ref, ort_logits(onnx_path, inputs), inputs["attention_mask"], resolved)
    report: dict[str, Any] = {
        "task": resolved,
        "opset": opset,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "padTokenId": pad_token_id(model),
        "maxLength": max_length(model),
        "onnx": str(onnx_path),
        "fp32SizeBytes": file_size(onnx_path),
        "threshold": max_logit_diff,
        **par,
    }
    if kv_cache:
        kv_path = export_onnx(model, resolved, out / "model_kv.onnx", opset=opset, kv_cache=True)
        kvp = kv_parity(model, kv_path, inputs)
        report["kv"] = {"onnx": str(kv_path), "sizeBytes": file_size(kv_path), **kvp}
    report["seconds"] = round(time.monotonic() - t0, 3)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    worst = max(report["maxLogitDiff"], report.get("kv", {}).get("maxLogitDiff", 0.0))
    if not worst <= max_logit_diff:
        raise ServingError(
            f"ONNX vs PyTorch max |logit diff| {worst:.3g} exceeds spec.export.maxLogitDiff={max_logit_diff:g}; "
            "try another spec.export.opset or raise the threshold",
            reason="ParityFailed",
        )
    return report
