"""Triton python-backend model that runs an ONNX file with onnxruntime (copied as `<version>/model.py`).

Why it exists: the CPU tritonserver from the nvidia-pytriton wheel only has the python backend.
Triton's dynamic batcher hands `execute` a list of requests; requests whose token tensors differ in
length are right-padded to the longest (input_ids with the pad id, masks with 0), run as one batch,
and each response is cut back to its own batch rows and sequence length. A request that fails
validation gets its own error response; the others still run.

Where it runs: on a KIND_CPU instance (the default, and the CPU-only Triton) ONNX Runtime uses the
CPU execution provider. With a GPU (`spec.resources.gpu` > 0 makes the instance group KIND_GPU) it
runs on the CUDA execution provider of the instance's device (`model_instance_kind` and
`model_instance_device_id` from Triton's initialize args), so the GPU the pod reserves is used. When
the onnxruntime build in the Triton image has no CUDA provider (the CPU `onnxruntime` wheel), it
falls back to the CPU provider and logs a warning: the model still loads and serves, but the GPU
stays idle until the image ships `onnxruntime-gpu`.

Runs inside the server venv (numpy<2): no imports from kubeforge here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

TOKEN_INPUTS = {"input_ids", "attention_mask", "position_ids"}
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def execution_providers(args: dict[str, Any], available: list[str]) -> list[Any]:
    """ORT providers for this instance: CUDA on the instance's device for KIND_GPU when ORT has it, else CPU."""
    kind = str(args.get("model_instance_kind", "CPU")).upper().removeprefix("KIND_")
    if kind == "GPU" and CUDA_EP in available:
        device = int(args.get("model_instance_device_id", 0) or 0)
        return [(CUDA_EP, {"device_id": device}), CPU_EP]
    return [CPU_EP]


def _warn(message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_warn(message)
    else:
        print(message, flush=True)


class TritonPythonModel:
    """One ORT session per model instance."""

    def initialize(self, args: dict[str, Any]) -> None:
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        self.pad_id = int(params.get("pad_token_id", "0") or 0)
        self.batching = int(cfg.get("max_batch_size", 0)) > 0
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        so = ort.SessionOptions()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        available = list(ort.get_available_providers())
        providers = execution_providers(args, available)
        kind = str(args.get("model_instance_kind", "CPU")).upper().removeprefix("KIND_")
        if kind == "GPU" and providers == [CPU_EP]:
            _warn(
                f"{args.get('model_name', 'model')}: GPU instance but onnxruntime has no {CUDA_EP} "
                f"(available: {', '.join(available)}); running on CPU. Install onnxruntime-gpu in the Triton image."
            )
        self.session = ort.InferenceSession(path, so, providers=providers)
        self.providers = list(self.session.get_providers())
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.seq_outputs = {o.name for o in self.session.get_outputs() if len(o.shape) >= 3}

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise ValueError(f"missing input {name!r}; the model needs {sorted(self.inputs)}")
            feeds[name] = t.as_numpy()
        ids = feeds.get("input_ids")
        if ids is not None:
            if ids.ndim != 2 or ids.shape[1] == 0:
                raise ValueError(f"input_ids must be [batch, sequence] with sequence >= 1, got shape {list(ids.shape)}")
            if self.batching and "attention_mask" in feeds and feeds["attention_mask"].shape != ids.shape:
                raise ValueError(
                    f"attention_mask shape {list(feeds['attention_mask'].shape)} != input_ids shape {list(ids.shape)}"
                )
        return feeds

    def _respond(self, outs: dict[str, np.ndarray]) -> Any:
        tensors = [pb_utils.Tensor(n, np.ascontiguousarray(outs[n])) for n in self.outputs]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))

    def _run_batched(self, parsed: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        if len(parsed) == 1:
            return [self._run(parsed[0])]
        longest = max(p["input_ids"].shape[1] for p in parsed)
        merged: dict[str, np.ndarray] = {}
        for name in self.inputs:
            parts = []
            for p in parsed:
                x = p[name]
                if name in TOKEN_INPUTS and x.ndim == 2 and x.shape[1] < longest:
                    fill = self.pad_id if name == "input_ids" else 0
                    x = np.pad(x, ((0, 0), (0, longest - x.shape[1])), constant_values=fill)
                parts.append(x)
            merged[name] = np.concatenate(parts, axis=0)
        outs = self._run(merged)
        results, row = [], 0
        for p in parsed:
            rows, length = p["input_ids"].shape
            one = {}
            for name, value in outs.items():
                part = value[row : row + rows]
                one[name] = part[:, :length] if name in self.seq_outputs else part
            results.append(one)
            row += rows
        return results

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parsed: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, req in enumerate(requests):
            try:
                parsed.append((i, self._read(req)))
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if self.batching and len(parsed) > 1:
            try:
                for (i, _), out in zip(parsed, self._run_batched([p for _, p in parsed]), strict=True):
                    responses[i] = self._respond(out)
                parsed = []
            except Exception:
                pass  # fall back to one run per request so one bad request cannot fail the batch
        for i, feeds in parsed:
            try:
                responses[i] = self._respond(self._run(feeds))
            except Exception as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {msg}"))
        return responses

    def finalize(self) -> None:
        self.session = None
