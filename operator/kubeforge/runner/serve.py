"""Serve a converted ModelDeployment with the real Triton server and answer one request.

Locally the server is the `tritonserver` binary from the nvidia-pytriton wheel (installed once with
`python -m kubeforge_serving install-triton`), which only has the python backend: when a deployment
asks for `onnxruntime`/`tensorrt`, the convert stage also writes `repository-python/` (the same ONNX
model behind a python-backend model.py) and that is what runs here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..stage import local_path
from .graph import Node
from .state import ResourceState

SMOKE_PROMPT_ANNOTATION = "kubeforge.io/smoke-prompt"
DEFAULT_PROMPT = "Hello"
SMOKE_TOKENS = 12
# A tiny policy may put eos first after RLHF; the smoke shows the first words it would say anyway.
SMOKE_MIN_TOKENS = 4


class LocalServer:
    """A running tritonserver and the client that smoke-tested it."""

    def __init__(self, server: Any, client: Any) -> None:
        self.server = server
        self.client = client

    def endpoints(self) -> dict[str, str]:
        """Endpoints in the ModelDeployment status shape."""
        return {
            "http": f"http://{self.server.http_url}",
            "grpc": self.server.grpc_url,
            "metrics": self.server.metrics_url,
        }

    def stop(self) -> None:
        """Close the client and stop the server (SIGTERM, drains in-flight requests)."""
        try:
            self.client.close()
        finally:
            self.server.stop()


def repository_for(node: Node, state: ResourceState) -> Path:
    """The model repository this machine can serve (python-backend form)."""
    uri = state.status.get("modelRepository")
    if not uri:
        raise RuntimeError(f"{node.ref} has no status.modelRepository; the convert stage did not report one")
    repo = local_path(str(uri))
    backend = node.resource.spec.backend  # type: ignore[attr-defined]
    if backend != "python":
        py = repo.parent / "repository-python"
        if not py.is_dir():
            raise RuntimeError(
                f"{repo}: backend {backend} cannot run on the local CPU Triton and no "
                f"repository-python/ was written; set spec.backend: python"
            )
        repo = py
    return repo


def start_and_smoke(node: Node, state: ResourceState, log_path: Path) -> tuple[LocalServer, dict[str, Any]]:
    """Start Triton on free loopback ports, load the model, send one request; returns (server, smoke report)."""
    from kubeforge_serving.client import TritonLMClient
    from kubeforge_serving.triton import TritonServer

    repo = repository_for(node, state)
    details = state.status.get("details") or {}
    name = str(details.get("modelName") or node.resource.name)
    models = [str(m) for m in details.get("models") or [name]]
    t0 = time.monotonic()
    server = TritonServer(repo, models, log_path=log_path).start(timeout=120)
    startup = time.monotonic() - t0
    try:
        client = TritonLMClient.from_repository(repo, name, url=server.grpc_url, protocol="grpc")
        prompt = str(node.resource.metadata.get("annotations", {}).get(SMOKE_PROMPT_ANNOTATION) or DEFAULT_PROMPT)
        t1 = time.monotonic()
        task = _task(repo / name)
        if task == "sequence-classification":
            score = client.scores([prompt])[0]
            answer = f"score {score:.4f}"
        elif client.tokenizer is not None:
            answer = client.generate(prompt, max_new_tokens=SMOKE_TOKENS, min_new_tokens=SMOKE_MIN_TOKENS)
        else:
            logits = client.logits([[1, 2, 3]])
            answer = f"logits shape {list(logits.shape)}"
        latency = time.monotonic() - t1
        t2 = time.monotonic()
        enc = client.encode([prompt]) if client.tokenizer is not None else {"input_ids": [[1, 2, 3]]}
        n = 5
        for _ in range(n):
            client.logits(enc["input_ids"])
        per_request = (time.monotonic() - t2) / n
    except BaseException:
        server.stop()
        raise
    smoke = {
        "prompt": prompt,
        "answer": answer,
        "requestMs": round(per_request * 1000, 2),
        "smokeMs": round(latency * 1000, 1),
        "startupSeconds": round(startup, 1),
        "summary": f"{prompt!r} -> {answer!r}",
    }
    return LocalServer(server, client), smoke


def _task(model_dir: Path) -> str:
    import json

    meta = model_dir / "kubeforge.json"
    try:
        return str(json.loads(meta.read_text()).get("task", "causal-lm"))
    except (OSError, ValueError):
        return "causal-lm"
