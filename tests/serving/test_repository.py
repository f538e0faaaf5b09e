"""Triton repository generator: every config the API can ask for parses against Triton's own schema.

No server and no torch here (except the one `ml` test that checks the real exporter's input names):
configs are rendered from tensor descriptions, ONNX files are built with onnx.helper, trtexec is a
fake script that records its command line.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytest.importorskip("onnx")

from google.protobuf import json_format, text_format
from kubeforge_serving import ServingError
from kubeforge_serving.export import INPUT_NAMES, kv_names
from kubeforge_serving.repository import (
    FORMS,
    ModelSettings,
    build_repository,
    check_form,
    config_json,
    config_text,
    model_config,
    onnx_input_dims,
    profile_shapes,
    render_config,
    trtexec_argv,
    with_versions,
)
from tritonclient.grpc import model_config_pb2 as mc

VOCAB, LAYERS, KV_HEADS, HEAD_DIM = 300, 2, 2, 16
PAST, PRESENT = kv_names(LAYERS)
# What export.py writes: input_ids/attention_mask [batch, sequence] → logits [batch, sequence, vocab]
PLAIN_IO = (
    [(n, "TYPE_INT64", [-1, -1]) for n in INPUT_NAMES],
    [("logits", "TYPE_FP32", [-1, -1, VOCAB])],
)
# ... and the KV graph: + position_ids and past_key_values.* [batch, kv_heads, past_sequence, head_dim]
KV_IO = (
    [(n, "TYPE_INT64", [-1, -1]) for n in [*INPUT_NAMES, "position_ids"]]
    + [(n, "TYPE_FP32", [-1, KV_HEADS, -1, HEAD_DIM]) for n in PAST],
    [("logits", "TYPE_FP32", [-1, -1, VOCAB])] + [(n, "TYPE_FP32", [-1, KV_HEADS, -1, HEAD_DIM]) for n in PRESENT],
)
GPUS = (0, 1)
BATCH_SIZES = (0, 8)  # spec.triton.maxBatchSize: off / on
DYNAMIC = (False, True)  # spec.triton.dynamicBatching.enabled
POLICIES: tuple[str | list[int], ...] = ("latest", "all", [1, 2])


def _combos() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(io, form, gpu, max batch, dynamic, policy): the main model's grid and the KV model's (no batching)."""
    ok, refused = [], []
    for form, gpu, mbs, dyn, policy in itertools.product(FORMS, GPUS, BATCH_SIZES, DYNAMIC, POLICIES):
        (refused if form == "tensorrt" and not gpu else ok).append(("plain", form, gpu, mbs, dyn, policy))
    for form, gpu, policy in itertools.product(FORMS, GPUS, POLICIES):
        if not (form == "tensorrt" and not gpu):
            ok.append(("kv", form, gpu, 0, False, policy))  # build_repository's <name>_kv settings
    return ok, refused


VALID, REFUSED = _combos()


def _id(c: tuple[Any, ...]) -> str:
    io, form, gpu, mbs, dyn, policy = c
    pol = policy if isinstance(policy, str) else "v" + "-".join(map(str, policy))
    return f"{io}-{form}-gpu{gpu}-mbs{mbs}-{'dyn' if dyn else 'nodyn'}-{pol}"


def _settings(form: str, gpu: int, mbs: int, dyn: bool, policy: str | list[int]) -> ModelSettings:
    return ModelSettings(
        form=form,  # type: ignore[arg-type]
        max_batch_size=mbs,
        dynamic_batching=dyn,
        preferred_batch_sizes=[4, 8] if mbs else None,
        instances=2,
        gpu=bool(gpu),
        version_policy=policy,
        pad_token_id=0,
        max_length=256,
    )


def test_combination_counts() -> None:
    # 4 forms x 2 gpu x 2 maxBatchSize x 2 dynamicBatching x 3 version policies = 96, of which the 12
    # tensorrt-on-CPU ones are refused; plus the KV model (no batching): 7 form/gpu pairs x 3 policies.
    assert (len(VALID), len(REFUSED)) == (84 + 21, 12)


@pytest.mark.parametrize("combo", VALID, ids=[_id(c) for c in VALID])
def test_config_parses_with_tritons_schema(combo: tuple[Any, ...]) -> None:
    io, form, gpu, mbs, dyn, policy = combo
    inputs, outputs = PLAIN_IO if io == "plain" else KV_IO
    cfg = render_config("m", inputs, outputs, _settings(form, gpu, mbs, dyn, policy))
    parsed = text_format.Parse(config_text(cfg), mc.ModelConfig())  # strict: unknown fields/enums raise
    assert parsed == cfg
    assert json_format.Parse(config_json(cfg), mc.ModelConfig()) == cfg  # the load API's override form
    # which backend loads it
    if form == "python":
        assert (parsed.backend, parsed.platform) == ("python", "")
        assert parsed.parameters["onnx_file"].string_value == "model.onnx"
    elif form == "tensorrt_plan":
        assert (parsed.backend, parsed.platform, parsed.default_model_filename) == ("", "tensorrt_plan", "model.plan")
    else:
        assert (parsed.platform, parsed.default_model_filename) == ("onnxruntime_onnx", "model.onnx")
    accel = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accel] == (["tensorrt"] if form == "tensorrt" else [])
    # where its instances run: TensorRT engines only on GPU, everything else follows spec.resources.gpu
    (group,) = parsed.instance_group
    want_gpu = form in ("tensorrt", "tensorrt_plan") or bool(gpu)
    assert group.kind == (mc.ModelInstanceGroup.KIND_GPU if want_gpu else mc.ModelInstanceGroup.KIND_CPU)
    assert group.count == 2
    # batching
    assert parsed.max_batch_size == mbs
    assert parsed.HasField("dynamic_batching") == (mbs > 0 and dyn)
    if parsed.HasField("dynamic_batching"):
        assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
        assert all(1 <= b <= parsed.max_batch_size for b in parsed.dynamic_batching.preferred_batch_size)
    for t, (_, _, dims) in zip(parsed.input, inputs, strict=True):
        assert list(t.dims) == (dims[1:] if mbs else dims)
        assert t.allow_ragged_batch == (form == "python" and mbs > 0)  # Triton rejects ragged without batching
    for t, (_, _, dims) in zip(parsed.output, outputs, strict=True):
        assert list(t.dims) == (dims[1:] if mbs else dims)
    # versions
    which = parsed.version_policy.WhichOneof("policy_choice")
    if policy == "latest":
        assert which == "latest" and parsed.version_policy.latest.num_versions == 1
    elif policy == "all":
        assert which == "all"
    else:
        assert which == "specific" and list(parsed.version_policy.specific.versions) == policy
    switched = text_format.Parse(config_text(with_versions(cfg, [3])), mc.ModelConfig())
    assert list(switched.version_policy.specific.versions) == [3]


@pytest.mark.parametrize("combo", REFUSED, ids=[_id(c) for c in REFUSED])
def test_tensorrt_ep_on_cpu_is_refused(combo: tuple[Any, ...], tmp_path: Path) -> None:
    _, form, gpu, mbs, dyn, policy = combo
    with pytest.raises(ServingError, match=r"spec\.resources\.gpu >= 1") as err:
        render_config("m", *PLAIN_IO, _settings(form, gpu, mbs, dyn, policy))
    assert err.value.reason == "GPURequired"
    # model_config refuses before it reads the file
    with pytest.raises(ServingError, match="only runs on GPU instances"):
        model_config("m", tmp_path / "missing.onnx", _settings(form, gpu, mbs, dyn, policy))


def test_check_form() -> None:
    check_form("tensorrt", True)
    for form in ("onnxruntime", "tensorrt_plan", "python"):
        check_form(form, False)
    with pytest.raises(ServingError, match="not one of") as err:
        check_form("tensorflow", True)
    assert err.value.reason == "InvalidBackend"


def test_preferred_batch_sizes_over_max_are_refused() -> None:
    s = ModelSettings(form="onnxruntime", max_batch_size=4, preferred_batch_sizes=[2, 8])
    with pytest.raises(ServingError, match="preferredBatchSizes") as err:
        render_config("m", *PLAIN_IO, s)
    assert err.value.reason == "InvalidBatching"


# ---------------------------------------------------------------- trtexec


def test_trtexec_argv_profiles_for_the_plain_graph() -> None:
    inputs = [(n, ["batch", "sequence"]) for n in INPUT_NAMES]
    assert trtexec_argv("/m/model.onnx", "/r/m/1/model.plan", inputs, max_batch_size=8, max_length=256) == [
        "trtexec",
        "--onnx=/m/model.onnx",
        "--saveEngine=/r/m/1/model.plan",
        "--minShapes=input_ids:1x1,attention_mask:1x1",
        "--optShapes=input_ids:4x256,attention_mask:4x256",
        "--maxShapes=input_ids:8x256,attention_mask:8x256",
        "--fp16",
    ]
    # unnamed dynamic dims (-1) get the same ranges; no Triton batching means one sequence per request
    argv = trtexec_argv("a.onnx", "a.plan", [("input_ids", [-1, -1])], 0, 32, trtexec="/opt/trt/trtexec", fp16=False)
    assert argv == [
        "/opt/trt/trtexec",
        "--onnx=a.onnx",
        "--saveEngine=a.plan",
        "--minShapes=input_ids:1x1",
        "--optShapes=input_ids:1x32",
        "--maxShapes=input_ids:1x32",
    ]
    assert profile_shapes([("input_ids", ["batch", "sequence"])], 1, 16) == (
        "input_ids:1x1",
        "input_ids:1x16",
        "input_ids:1x16",
    )


def test_trtexec_argv_profiles_for_the_kv_graph() -> None:
    inputs: list[tuple[str, list[int | str]]] = [
        ("input_ids", ["batch", "sequence"]),
        ("attention_mask", ["batch", "total_sequence"]),
        ("position_ids", ["batch", "sequence"]),
        *[(n, ["batch", KV_HEADS, "past_sequence", HEAD_DIM]) for n in PAST],
    ]
    lo, opt, hi = (a.split("=", 1)[1] for a in trtexec_argv("k.onnx", "k.plan", inputs, 0, 64)[3:6])
    past = ",".join(f"{n}:{{b}}x2x{{p}}x16" for n in PAST)
    assert lo == "input_ids:1x1,attention_mask:1x1,position_ids:1x1," + past.format(b=1, p=0)
    assert opt == "input_ids:1x64,attention_mask:1x64,position_ids:1x64," + past.format(b=1, p=63)
    assert hi == opt


def test_trtexec_argv_static_graph_and_bad_length() -> None:
    assert trtexec_argv("s.onnx", "s.plan", [("x", [1, 8])], 0, 8) == [
        "trtexec",
        "--onnx=s.onnx",
        "--saveEngine=s.plan",
        "--fp16",
    ]
    with pytest.raises(ServingError, match="max sequence length"):
        trtexec_argv("a.onnx", "a.plan", [("input_ids", ["batch", "sequence"])], 8, 0)


def _tiny_onnx(path: Path) -> Path:
    """The exporter's plain signature (dim names included) on a trivial graph ORT can run."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUT_NAMES]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 8])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axis"], ["u"]),
        helper.make_node("Expand", ["u", "shape"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "axis"),
        numpy_helper.from_array(np.array([1, 1, 8], np.int64), "shape"),
    ]
    graph = helper.make_graph(nodes, "tiny", ins, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fake_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `trtexec` on PATH that records its argv and writes --saveEngine."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "trtexec-argv.json"
    script = bindir / "trtexec"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"json.dump(sys.argv[1:], open({str(log)!r}, 'w'))\n"
        "plan = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--saveEngine=')][0]\n"
        "open(plan, 'wb').write(b'engine')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def test_tensorrt_plan_repository_builds_profiles_and_gpu_group(fake_trtexec: Path, tmp_path: Path) -> None:
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    assert onnx_input_dims(onnx_path) == [(n, ["batch", "sequence"]) for n in INPUT_NAMES]
    s = ModelSettings(form="tensorrt_plan", max_batch_size=8, gpu=False, max_length=128)
    build_repository(tmp_path / "repo", "m", onnx_path, s)
    mdir = tmp_path / "repo" / "m"
    assert (mdir / "1" / "model.plan").read_bytes() == b"engine"
    assert not (mdir / "1" / "model.onnx").exists()
    argv = json.loads(fake_trtexec.read_text())
    assert argv[2:] == [
        "--minShapes=input_ids:1x1,attention_mask:1x1",
        "--optShapes=input_ids:4x128,attention_mask:4x128",
        "--maxShapes=input_ids:8x128,attention_mask:8x128",
        "--fp16",
    ]
    parsed = text_format.Parse((mdir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert parsed.platform == "tensorrt_plan" and parsed.max_batch_size == 8
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU  # forced: no KIND_CPU for TensorRT
    with pytest.raises(ServingError, match="--max-length") as err:
        build_repository(tmp_path / "repo2", "m", onnx_path, ModelSettings(form="tensorrt_plan"))
    assert err.value.reason == "MaxLengthUnknown"


def test_repository_cli_reads_max_length_from_the_export_report(fake_trtexec: Path, tmp_path: Path) -> None:
    from kubeforge_serving.cli import repository_main

    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    (tmp_path / "export-report.json").write_text(json.dumps({"maxLength": 48}))
    args = ["--onnx", str(onnx_path), "--repository", str(tmp_path / "repo"), "--name", "m", "--form", "tensorrt_plan"]
    assert repository_main([*args, "--max-batch-size", "2"]) == 0
    assert json.loads(fake_trtexec.read_text())[3:5] == [
        "--optShapes=input_ids:1x48,attention_mask:1x48",
        "--maxShapes=input_ids:2x48,attention_mask:2x48",
    ]
    assert repository_main([*args, "--max-length", "16", "--version", "2"]) == 0
    assert json.loads(fake_trtexec.read_text())[4] == "--maxShapes=input_ids:8x16,attention_mask:8x16"


@pytest.mark.ml
def test_exporter_input_names_match_the_profiles(tiny_dir: Path, tmp_path: Path) -> None:
    from kubeforge_serving.export import export_with_parity

    rep = export_with_parity(tiny_dir, tmp_path, kv_cache=True)
    assert rep["maxLength"] == 256  # max_position_embeddings of the tiny model
    plain = onnx_input_dims(rep["onnx"])
    assert plain == [(n, ["batch", "sequence"]) for n in INPUT_NAMES]
    assert trtexec_argv(rep["onnx"], "p", plain, 8, rep["maxLength"])[3:6] == [
        "--minShapes=input_ids:1x1,attention_mask:1x1",
        "--optShapes=input_ids:4x256,attention_mask:4x256",
        "--maxShapes=input_ids:8x256,attention_mask:8x256",
    ]
    kv = dict(onnx_input_dims(rep["kv"]["onnx"]))
    assert kv["attention_mask"] == ["batch", "total_sequence"]
    assert kv[PAST[0]] == ["batch", KV_HEADS, "past_sequence", HEAD_DIM]
    lo = trtexec_argv(rep["kv"]["onnx"], "p", list(kv.items()), 0, 256)[3]
    assert f"{PAST[0]}:1x{KV_HEADS}x0x{HEAD_DIM}" in lo


# ---------------------------------------------------------------- python backend on a GPU instance


@pytest.fixture
def triton_model(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, list[str]]:
    """serving's model.py imported with a stand-in for Triton's `triton_python_backend_utils`."""
    pytest.importorskip("onnxruntime")
    warnings: list[str] = []
    stub = types.ModuleType("triton_python_backend_utils")
    stub.Logger = types.SimpleNamespace(log_warn=warnings.append)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    import kubeforge_serving

    path = Path(kubeforge_serving.__file__).with_name("triton_model.py")
    spec = importlib.util.spec_from_file_location("kubeforge_test_triton_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, warnings


def test_python_backend_picks_cuda_on_gpu_instances(triton_model: tuple[types.ModuleType, list[str]]) -> None:
    tm, _ = triton_model
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu1 = {"model_instance_kind": "GPU", "model_instance_device_id": "1"}
    assert tm.execution_providers(gpu1, cuda) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert tm.execution_providers({"model_instance_kind": "KIND_GPU"}, cuda)[0] == (
        "CUDAExecutionProvider",
        {"device_id": 0},
    )
    assert tm.execution_providers(gpu1, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert tm.execution_providers({"model_instance_kind": "CPU"}, cuda) == ["CPUExecutionProvider"]
    assert tm.execution_providers({}, cuda) == ["CPUExecutionProvider"]


def test_python_backend_gpu_instance_falls_back_to_cpu(
    triton_model: tuple[types.ModuleType, list[str]], tmp_path: Path
) -> None:
    tm, warnings = triton_model
    import onnxruntime as ort

    (tmp_path / "1").mkdir()
    _tiny_onnx(tmp_path / "1" / "model.onnx")
    cfg = render_config("m", *PLAIN_IO, ModelSettings(form="python", gpu=True))
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    args = {
        "model_config": config_json(cfg),
        "model_repository": str(tmp_path),
        "model_version": "1",
        "model_name": "m",
        "model_instance_kind": "GPU",
        "model_instance_device_id": "0",
    }
    model = tm.TritonPythonModel()
    model.initialize(args)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert model.providers[0] == "CUDAExecutionProvider"
    else:
        assert model.providers == ["CPUExecutionProvider"]
        assert len(warnings) == 1 and "running on CPU" in warnings[0] and "onnxruntime-gpu" in warnings[0]
    model.finalize()
