"""Triton model repositories from one ONNX file: native (onnxruntime/TensorRT) or python-backend form.

Configs are built as `model_config_pb2.ModelConfig` protobufs (tritonclient ships Triton's schema),
so field names are checked, `config.pbtxt` is protobuf text format and the same object serialises
to the JSON that Triton's load API takes as a config override (used for version switches).
`render_config` builds the config from tensor descriptions alone (no file), `model_config` reads
them from the ONNX graph.

Forms and where their instances run (a form that Triton cannot load is refused here, not at load):

- `onnxruntime`: ONNX Runtime backend; KIND_GPU with a GPU, else KIND_CPU.
- `tensorrt`: ONNX Runtime backend with the TensorRT execution provider as GPU accelerator. The EP
  only exists on GPU instances, so without a GPU it is refused (`GPURequired`; the ModelDeployment
  API rejects `backend: tensorrt` without `resources.gpu` already).
- `tensorrt_plan`: Triton's TensorRT backend on a `model.plan` built by `trtexec` (`trtexec_argv`).
  That backend rejects KIND_CPU, so the instance group is always KIND_GPU. Dynamic inputs get an
  explicit optimisation profile: batch 1 / max(1, maxBatchSize // 2) / maxBatchSize (1/1/1 without
  Triton batching: one sequence per request), sequence 1 / L / L and past length 0 / L-1 / L-1 for
  the KV graph, where L is the model's longest sequence (`ModelSettings.max_length`).
- `python`: onnxruntime inside Triton's python backend (`triton_model.py`); KIND_CPU, or KIND_GPU
  with a GPU, where model.py runs ONNX Runtime on the CUDA execution provider of the instance's
  device (falling back to CPU, with a warning, when the onnxruntime build has no CUDA provider).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import ServingError

Form = Literal["onnxruntime", "tensorrt", "tensorrt_plan", "python"]
FORMS: tuple[str, ...] = ("onnxruntime", "tensorrt", "tensorrt_plan", "python")
TOKENIZER_DIR = "tokenizer"
META_FILE = "kubeforge.json"
KV_SUFFIX = "_kv"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
)
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32", 9: "TYPE_BOOL", 11: "TYPE_FP64"}
TensorSpec = tuple[str, str, list[int]]  # (name, Triton data type, dims with -1 for dynamic)


@dataclass
class ModelSettings:
    """What a ModelDeployment's `spec.triton` says, plus the form of the repository."""

    form: Form = "python"
    max_batch_size: int = 8
    dynamic_batching: bool = True
    max_queue_delay_us: int = 1000
    preferred_batch_sizes: list[int] | None = None
    instances: int = 1
    gpu: bool = False
    version_policy: str | list[int] = "latest"  # "latest" (newest one), "all", or explicit versions
    intra_op_threads: int = 0
    pad_token_id: int = 0
    max_length: int | None = None  # the model's longest sequence: TensorRT profiles of tensorrt_plan
    extra: dict[str, str] = field(default_factory=dict)


def check_form(form: str, gpu: bool) -> None:
    """Refuse a form that Triton could not load on the instances the settings ask for."""
    if form not in FORMS:
        raise ServingError(f"repository form {form!r} is not one of {', '.join(FORMS)}", reason="InvalidBackend")
    if form == "tensorrt" and not gpu:
        raise ServingError(
            "backend tensorrt (ONNX Runtime's TensorRT execution provider) only runs on GPU instances: "
            "set spec.resources.gpu >= 1 (repository CLI: --gpu), or use backend onnxruntime or python on CPU",
            reason="GPURequired",
        )


def instance_kind(s: ModelSettings) -> str:
    """KIND_GPU or KIND_CPU; tensorrt_plan is always KIND_GPU (Triton's TensorRT backend has no CPU)."""
    return "KIND_GPU" if s.gpu or s.form == "tensorrt_plan" else "KIND_CPU"


def onnx_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(name, Triton type, dims with -1 for dynamic) of the graph inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def describe(values: Any) -> list[tuple[str, str, list[int]]]:
        out = []
        for v in values:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            dtype = _ONNX_TO_TRITON.get(tt.elem_type)
            if dtype is None:
                raise ServingError(
                    f"{path}: tensor {v.name} has unsupported ONNX type {tt.elem_type}", reason="InvalidModel"
                )
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            out.append((v.name, dtype, dims))
        return out

    return describe(model.graph.input), describe(model.graph.output)


def onnx_input_dims(path: str | Path) -> list[tuple[str, list[int | str]]]:
    """(name, dims) of the graph inputs; dynamic dims by their symbolic name ("batch", "past_sequence")."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out: list[tuple[str, list[int | str]]] = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims: list[int | str] = []
        for d in v.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or -1))
        out.append((v.name, dims))
    return out


def render_config(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], s: ModelSettings) -> Any:
    """The ModelConfig protobuf for one model from its tensor descriptions (pure; see `model_config`)."""
    from tritonclient.grpc import model_config_pb2 as mc

    check_form(s.form, s.gpu)
    batching = s.max_batch_size > 0
    if batching and any(not dims or dims[0] != -1 for _, _, dims in inputs):
        raise ServingError(
            f"model {name}: the first input dimension must be a dynamic batch axis to batch "
            "(or set spec.triton.maxBatchSize: 0)",
            reason="InvalidModel",
        )
    cfg = mc.ModelConfig(name=name, max_batch_size=s.max_batch_size)
    if s.form == "python":
        cfg.backend = "python"
    elif s.form == "tensorrt_plan":
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = "model.plan"
    else:
        cfg.platform = "onnxruntime_onnx"
        cfg.default_model_filename = "model.onnx"
    for dest, items in ((cfg.input, inputs), (cfg.output, outputs)):
        for n, dtype, dims in items:
            t = dest.add()
            t.name = n
            t.data_type = mc.DataType.Value(dtype)
            t.dims.extend(dims[1:] if batching else dims)
            if batching and s.form == "python" and dest is cfg.input:
                # Let the batcher group requests of different lengths; model.py pads them.
                t.allow_ragged_batch = True
    if batching and s.dynamic_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = s.max_queue_delay_us
        if s.preferred_batch_sizes:
            if any(not 1 <= b <= s.max_batch_size for b in s.preferred_batch_sizes):
                raise ServingError(
                    f"preferred batch sizes {s.preferred_batch_sizes} must each be in 1..maxBatchSize "
                    f"({s.max_batch_size}): fix spec.triton.dynamicBatching.preferredBatchSizes",
                    reason="InvalidBatching",
                )
            cfg.dynamic_batching.preferred_batch_size.extend(s.preferred_batch_sizes)
    group = cfg.instance_group.add()
    group.count = s.instances
    group.kind = mc.ModelInstanceGroup.Kind.Value(instance_kind(s))
    if s.version_policy == "latest":
        cfg.version_policy.latest.num_versions = 1
    elif s.version_policy == "all":
        cfg.version_policy.all.SetInParent()
    else:
        cfg.version_policy.specific.versions.extend(int(v) for v in s.version_policy)
    if s.form == "tensorrt":
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add()
        acc.name = "tensorrt"
        acc.parameters["precision_mode"] = "FP16"
        acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
    params = {"pad_token_id": str(s.pad_token_id), **s.extra}
    if s.form == "python":
        params.update({"onnx_file": "model.onnx", "intra_op_threads": str(s.intra_op_threads)})
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    return cfg


def model_config(name: str, onnx_path: str | Path, s: ModelSettings) -> Any:
    """The ModelConfig protobuf for one model, its inputs and outputs read from the ONNX file."""
    check_form(s.form, s.gpu)  # before reading the file: the settings alone decide this
    inputs, outputs = onnx_io(onnx_path)
    return render_config(name, inputs, outputs, s)


def config_text(cfg: Any) -> str:
    """config.pbtxt contents."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(cfg))


def config_json(cfg: Any) -> str:
    """The JSON Triton's load API accepts as a config override."""
    from google.protobuf import json_format

    return str(json_format.MessageToJson(cfg, preserving_proto_field_name=True))


def with_versions(cfg: Any, versions: list[int]) -> Any:
    """A copy of `cfg` whose version policy serves exactly `versions`."""
    new = type(cfg)()
    new.CopyFrom(cfg)
    new.version_policy.specific.versions[:] = versions
    return new


def profile_shapes(
    inputs: Sequence[tuple[str, Sequence[int | str]]], max_batch_size: int, max_length: int
) -> tuple[str, str, str] | None:
    """trtexec's min/opt/max shape strings (`input_ids:1x1,attention_mask:1x1`) for the dynamic inputs.

    Dim 0 is the batch: 1 / max(1, max_batch_size // 2) / max_batch_size, or 1/1/1 when Triton does
    not batch (max_batch_size 0). Other dynamic dims are sequence lengths: 1 / L / L, except a past
    (KV cache) length, named `past_*` by the exporter: 0 / L-1 / L-1 (the first step has no past).
    Fixed dims keep their size. None when no input is dynamic (a static engine needs no profile).
    """
    if max_length < 1:
        raise ServingError(
            f"the max sequence length for TensorRT profiles must be >= 1, got {max_length}", reason="InvalidModel"
        )
    top = max(1, max_batch_size)
    batch = (1, max(1, top // 2), top)
    seq = (1, max_length, max_length)
    past = (0, max_length - 1, max_length - 1)
    shapes: list[list[str]] = [[], [], []]
    for name, dims in inputs:
        if all(isinstance(d, int) and d > 0 for d in dims):
            continue
        ranges: list[tuple[int, int, int]] = []
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                ranges.append((d, d, d))
            elif i == 0:
                ranges.append(batch)
            elif isinstance(d, str) and d.startswith("past"):
                ranges.append(past)
            else:
                ranges.append(seq)
        for k in range(3):
            shapes[k].append(f"{name}:" + "x".join(str(r[k]) for r in ranges))
    if not shapes[0]:
        return None
    lo, opt, hi = (",".join(x) for x in shapes)
    return lo, opt, hi


def trtexec_argv(
    onnx_path: str | Path,
    plan_path: str | Path,
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    max_batch_size: int,
    max_length: int,
    trtexec: str = "trtexec",
    fp16: bool = True,
) -> list[str]:
    """The trtexec command line that builds `plan_path` with explicit optimisation profiles.

    Without --minShapes/--optShapes/--maxShapes trtexec builds dynamic inputs at 1x1 and Triton then
    refuses any max_batch_size above 1; `inputs` are (name, dims) as `onnx_input_dims` returns them.
    """
    argv = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={plan_path}"]
    shapes = profile_shapes(inputs, max_batch_size, max_length)
    if shapes is not None:
        lo, opt, hi = shapes
        argv += [f"--minShapes={lo}", f"--optShapes={opt}", f"--maxShapes={hi}"]
    if fp16:
        argv.append("--fp16")
    return argv


def _build_plan(onnx_path: Path, plan: Path, s: ModelSettings) -> None:
    trtexec = shutil.which("trtexec")
    if trtexec is None:
        raise ServingError(
            "form tensorrt_plan needs a TensorRT engine built on the serving GPU and trtexec is not on PATH; "
            "use backend tensorrt (ONNX Runtime TensorRT EP) or build model.plan in the Triton image",
            reason="TensorRTUnavailable",
        )
    if not s.max_length:
        raise ServingError(
            "form tensorrt_plan needs the model's longest sequence for the TensorRT optimisation profiles: "
            "pass --max-length (or keep export-report.json beside the ONNX file)",
            reason="MaxLengthUnknown",
        )
    argv = trtexec_argv(onnx_path, plan, onnx_input_dims(onnx_path), s.max_batch_size, s.max_length, trtexec)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServingError(
            f"trtexec failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", reason="TensorRTFailed"
        )


def write_model(
    repo: str | Path,
    name: str,
    onnx_path: str | Path,
    settings: ModelSettings,
    version: int = 1,
    tokenizer_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """`<repo>/<name>/config.pbtxt` + `<version>/model.onnx` (+ model.py, tokenizer/, kubeforge.json)."""
    if version < 1:
        raise ServingError(f"Triton model versions start at 1, got {version}", reason="InvalidVersion")
    mdir = Path(repo) / name
    vdir = mdir / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    src = Path(onnx_path)
    cfg = model_config(name, src, settings)
    if settings.form == "tensorrt_plan":
        _build_plan(src, vdir / "model.plan", settings)
    else:
        shutil.copyfile(src, vdir / "model.onnx")
        data = src.with_name(src.name + ".data")
        if data.is_file():
            shutil.copyfile(data, vdir / data.name)
    if settings.form == "python":
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), vdir / "model.py")
    (mdir / "config.pbtxt").write_text(config_text(cfg))
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, mdir / TOKENIZER_DIR)
    if meta is not None:
        (mdir / META_FILE).write_text(json.dumps(meta, indent=2))
    return mdir


def copy_tokenizer(src: str | Path, dst: str | Path) -> Path:
    """Copy the tokenizer files so clients can send text; raises if there is no tokenizer."""
    src, dst = Path(src), Path(dst)
    files = [src / f for f in TOKENIZER_FILES if (src / f).is_file()]
    if not any(f.name in ("tokenizer.json", "tokenizer.model", "vocab.json") for f in files):
        raise ServingError(
            f"no tokenizer files in {src}; set spec.tokenizer.uri to a tokenizer directory", reason="TokenizerMissing"
        )
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, dst / f.name)
    return dst


def build_repository(
    repo: str | Path,
    name: str,
    onnx_path: str | Path,
    settings: ModelSettings,
    version: int = 1,
    kv_onnx_path: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    task: str = "causal-lm",
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The main model (dynamic batching) and, with a KV graph, `<name>_kv` (no batching: the client keeps state)."""
    meta: dict[str, Any] = {
        "task": task,
        "padTokenId": settings.pad_token_id,
        "version": version,
        "form": settings.form,
        "kvModel": None,
    }
    models = [name]
    if kv_onnx_path is not None:
        kv_name = name + KV_SUFFIX
        kv_settings = ModelSettings(**{**settings.__dict__, "max_batch_size": 0, "dynamic_batching": False})
        write_model(repo, kv_name, kv_onnx_path, kv_settings, version=version)
        meta["kvModel"] = kv_name
        models.append(kv_name)
    if tokenizer_dir is not None:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
            meta["eosTokenId"] = tok.eos_token_id
        except Exception:  # the tokenizer copy below reports a missing tokenizer clearly
            pass
    if report:
        meta["conversion"] = report
    write_model(repo, name, onnx_path, settings, version=version, tokenizer_dir=tokenizer_dir, meta=meta)
    return {"repository": str(Path(repo).resolve()), "models": models, "version": version, "form": settings.form}
