"""Serve exported models with the real tritonserver (nvidia-pytriton wheel) and query them."""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubeforge_serving import ServingError
from kubeforge_serving.client import TritonLMClient, switch_version
from kubeforge_serving.export import export_with_parity, load_model
from kubeforge_serving.quantize import quantize
from kubeforge_serving.repository import ModelSettings, build_repository, config_text, model_config
from kubeforge_serving.triton import TritonServer, install_triton

pytestmark = [pytest.mark.triton, pytest.mark.ml]


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One export (fp32 + KV, fp16, int8) → one repository → one server for the module."""
    work = tmp_path_factory.mktemp("triton")
    exp = export_with_parity(tiny_dir, work / "onnx", kv_cache=True)
    reps = {"fp32": exp, "fp16": quantize(work / "onnx", "fp16"), "int8": quantize(work / "onnx", "int8-dynamic")}
    repo = work / "repo"
    settings = ModelSettings(max_batch_size=8, max_queue_delay_us=20000, pad_token_id=exp["padTokenId"])
    build_repository(
        repo,
        "tiny_fp32",
        work / "onnx" / "model.onnx",
        settings,
        kv_onnx_path=work / "onnx" / "model_kv.onnx",
        tokenizer_dir=tiny_dir,
    )
    build_repository(repo, "tiny_fp16", reps["fp16"]["onnx"], settings)
    build_repository(repo, "tiny_int8", reps["int8"]["onnx"], settings)
    build_repository(repo, "tiny_sw", work / "onnx" / "model.onnx", settings, version=1)
    models = ["tiny_fp32", "tiny_fp32_kv", "tiny_fp16", "tiny_int8", "tiny_sw"]
    server = TritonServer(repo, models, install=install_triton(), log_path=work / "triton.log")
    with server:
        yield {
            "server": server,
            "repo": repo,
            "work": work,
            "reports": reps,
            "ref": np.load(work / "onnx" / "parity-reference.npz"),
        }
    assert server.proc is not None and server.proc.returncode == 0, server.log_tail()  # clean stop


def _client(served: dict[str, Any], model: str, protocol: str = "grpc") -> TritonLMClient:
    s = served["server"]
    url = s.grpc_url if protocol == "grpc" else s.http_url
    return TritonLMClient.from_repository(served["repo"], model, url, protocol)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_logits_match_pytorch_within_recorded_tolerance(served: dict[str, Any], protocol: str, precision: str) -> None:
    ref = served["ref"]
    c = _client(served, f"tiny_{precision}", protocol)
    got = c.logits(ref["input_ids"], ref["attention_mask"])
    keep = ref["attention_mask"].astype(bool)
    diff = float(np.abs(got[keep] - ref["logits"][keep]).max())
    recorded = served["reports"][precision]["maxLogitDiff"]
    assert diff <= recorded * 1.01 + 1e-5, (diff, recorded)
    assert (got[keep].argmax(-1) == ref["logits"][keep].argmax(-1)).mean() >= 0.9
    c.close()


def test_dynamic_batching_pads_mixed_lengths(served: dict[str, Any]) -> None:
    c = _client(served, "tiny_fp32", "grpc")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 300, size=(1, n)) for n in (3, 9, 5, 12, 7, 4, 11, 6)]
    alone = [c.logits(s) for s in seqs]
    time.sleep(0.5)
    before = _metric(served, "nv_inference_exec_count", "tiny_fp32")
    results: list[Any] = [None] * len(seqs)

    clients = [_client(served, "tiny_fp32", "grpc") for _ in seqs]
    barrier = threading.Barrier(len(seqs))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = clients[i].logits(seqs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, results, strict=True):
        assert b.shape == a.shape
        np.testing.assert_allclose(b, a, atol=1e-4)
    time.sleep(0.5)  # counters are updated just after the responses
    executions = _metric(served, "nv_inference_exec_count", "tiny_fp32") - before
    assert executions < len(seqs), "requests were not batched together"
    for cl in [c, *clients]:
        cl.close()


def test_generation_with_kv_cache_matches_pytorch(served: dict[str, Any], tiny_dir: Path) -> None:
    import torch

    c = _client(served, "tiny_fp32", "grpc")
    prompt = c.tokenizer("the quick fox")["input_ids"]
    with_kv = c.generate_ids(prompt, max_new_tokens=8)
    without = c.generate_ids(prompt, max_new_tokens=8, use_kv=False)
    model, _ = load_model(tiny_dir)
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,  # type: ignore[operator]
            pad_token_id=0,
        )
    expected = hf[0, len(prompt) :].tolist()
    assert with_kv == expected and without == expected
    text = c.generate("the quick", max_new_tokens=4, temperature=0.9, top_k=20, seed=3)
    assert isinstance(text, str) and text
    c.close()


def test_min_new_tokens_masks_eos_like_transformers(served: dict[str, Any], tiny_dir: Path) -> None:
    """A policy whose first choice is eos still shows words in the smoke (transformers' min_new_tokens)."""
    import torch

    c = _client(served, "tiny_fp32", "grpc")
    prompt = c.tokenizer("the quick fox")["input_ids"]
    first = c.generate_ids(prompt, max_new_tokens=1)[0]
    c.eos_token_id = first  # make the greedy first token the stop token
    assert c.generate_ids(prompt, max_new_tokens=6) == [first]
    got = c.generate_ids(prompt, max_new_tokens=6, min_new_tokens=3)
    model, _ = load_model(tiny_dir)
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=6,
            min_new_tokens=3,
            do_sample=False,
            eos_token_id=first,
            pad_token_id=0,
        )
    expected = hf[0, len(prompt) :].tolist()
    while expected and expected[-1] == 0 and first != 0:  # pad after an early stop
        expected.pop()
    assert got == expected and len(got) >= 3 and first not in got[:3]
    c.close()


def _metrics_text(served: dict[str, Any]) -> str:
    with urllib.request.urlopen(served["server"].metrics_url, timeout=5) as r:
        return str(r.read().decode())


def _metric(served: dict[str, Any], name: str, model: str) -> float:
    total = 0.0
    for line in _metrics_text(served).splitlines():
        m = re.match(rf'{name}\{{[^}}]*model="{model}"[^}}]*\}} ([0-9.e+]+)', line)
        if m:
            total += float(m.group(1))
    return total


def _wait_metric(served: dict[str, Any], name: str, model: str, expected: float) -> float:
    """Triton updates counters just after the response is sent: poll briefly."""
    deadline = time.monotonic() + 10
    value = _metric(served, name, model)
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = _metric(served, name, model)
    return value


def test_metrics_count_successful_requests(served: dict[str, Any]) -> None:
    before = _metric(served, "nv_inference_request_success", "tiny_int8")
    c = _client(served, "tiny_int8", "http")
    for n in range(5):
        c.logits([[5, 6, 7 + n]])
    assert _wait_metric(served, "nv_inference_request_success", "tiny_int8", before + 5) == before + 5
    c.close()


def test_bad_requests_get_clear_errors_and_server_stays_up(served: dict[str, Any]) -> None:
    from tritonclient.utils import InferenceServerException

    c = _client(served, "tiny_fp32", "grpc")
    h = _client(served, "tiny_fp32", "http")
    try:
        ids = np.array([[5, 6, 7]], np.int64)
        with pytest.raises(
            InferenceServerException, match=r"data-type is .FP32., but model .tiny_fp32. expects .INT64."
        ):
            c.infer({"input_ids": ids.astype(np.float32), "attention_mask": np.ones_like(ids)})
        with pytest.raises(InferenceServerException, match=r"(?i)shape|dims"):
            c.infer({"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None]})
        with pytest.raises(
            InferenceServerException, match=r"attention_mask shape \[1, 2\] != input_ids shape \[1, 3\]"
        ):
            c.infer({"input_ids": ids, "attention_mask": np.ones((1, 2), np.int64)})
        with pytest.raises(InferenceServerException, match="input_ids"):
            h.infer({"attention_mask": np.ones_like(ids)})
        assert served["server"].ready()
        before = _metric(served, "nv_inference_request_success", "tiny_fp32")
        assert c.logits(ids).shape == (1, 3, 300)
        assert _wait_metric(served, "nv_inference_request_success", "tiny_fp32", before + 1) == before + 1
    finally:
        c.close()
        h.close()


def test_version_switch_under_load_loses_no_request(served: dict[str, Any]) -> None:
    repo: Path = served["repo"]
    shutil.copytree(repo / "tiny_sw" / "1", repo / "tiny_sw" / "2")
    shutil.copyfile(served["reports"]["int8"]["onnx"], repo / "tiny_sw" / "2" / "model.onnx")
    cfg = model_config("tiny_sw", repo / "tiny_sw" / "1" / "model.onnx", ModelSettings(max_queue_delay_us=20000))
    stop = threading.Event()
    seen: dict[str, int] = {}
    errors: list[str] = []

    def load() -> None:
        c = _client(served, "tiny_sw", "grpc")
        ids = np.array([[5, 6, 7, 8]], np.int64)
        while not stop.is_set():
            try:
                inp = c.raw  # raw call so the served version is visible
                import tritonclient.grpc as g

                x = g.InferInput("input_ids", [1, 4], "INT64")
                x.set_data_from_numpy(ids)
                m = g.InferInput("attention_mask", [1, 4], "INT64")
                m.set_data_from_numpy(np.ones_like(ids))
                v = inp.infer("tiny_sw", [x, m]).get_response().model_version
                seen[v] = seen.get(v, 0) + 1
            except Exception as exc:
                errors.append(str(exc))
        c.close()

    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    switch_version(_client(served, "tiny_sw", "grpc"), "tiny_sw", cfg, old=1, new=2)
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join()
    assert not errors, errors[:3]
    assert seen.get("1", 0) > 0 and seen.get("2", 0) > 0, seen
    c = _client(served, "tiny_sw", "http")
    assert c.is_ready("tiny_sw", "2") and not c.is_ready("tiny_sw", "1")
    c.close()


def test_native_and_tensorrt_configs(served: dict[str, Any]) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    onnx_path = served["work"] / "onnx" / "model.onnx"
    native = config_text(model_config("m", onnx_path, ModelSettings(form="onnxruntime", instances=2, gpu=True)))
    parsed = text_format.Parse(native, mc.ModelConfig())
    assert parsed.platform == "onnxruntime_onnx" and parsed.backend == ""
    assert parsed.instance_group[0].count == 2 and parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(parsed.input[0].dims) == [-1] and list(parsed.output[0].dims) == [-1, 300]
    trt = config_text(model_config("m", onnx_path, ModelSettings(form="tensorrt", gpu=True)))
    assert 'name: "tensorrt"' in trt and "precision_mode" in trt
    with pytest.raises(ServingError, match="trtexec") as err:
        build_repository(served["work"] / "plan-repo", "m", onnx_path, ModelSettings(form="tensorrt_plan"))
    assert err.value.reason == "TensorRTUnavailable"
