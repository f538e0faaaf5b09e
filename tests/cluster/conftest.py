"""Fixtures for the operator cluster tests: test hooks on, PVCs bound to static PVs, restartable operator."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Results injected via kubeforge.io/result (KWOK runs no containers); fast polling; no metrics port."""
    monkeypatch.setenv("KUBEFORGE_TEST_HOOKS", "1")
    monkeypatch.setenv("KUBEFORGE_POLL_INTERVAL", "1")
    monkeypatch.setenv("KUBEFORGE_METRICS_PORT", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def claims(cluster: Any, namespace: str) -> Iterator[list[str]]:
    """PVCs the example pipeline mounts, each bound to a static PV (the test cluster has no provisioner)."""
    names = ["kubeforge-artifacts", "corpus"]
    for claim in names:
        pv = f"{namespace}-{claim}"
        cluster.kubectl("apply", "-f", "-", input=f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}, labels: {{app.kubernetes.io/part-of: kubeforge-tests}}}}
spec:
  capacity: {{storage: 10Gi}}
  accessModes: [ReadWriteMany]
  storageClassName: ""
  persistentVolumeReclaimPolicy: Delete
  hostPath: {{path: /tmp/{pv}}}
  claimRef: {{namespace: {namespace}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {namespace}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: {pv}
  resources: {{requests: {{storage: 10Gi}}}}
""")
    yield names
    for claim in names:
        cluster.kubectl("delete", "pv", f"{namespace}-{claim}", "--wait=false", "--ignore-not-found", check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def run_operator(namespace: str) -> Iterator[Any]:
    """Start the operator (kopf in a thread, this namespace only) and wait until it is live."""
    from kopf.testing import KopfRunner

    port = _free_port()
    args = ["run", "--standalone", "--namespace", namespace, "-m", "kubeforge.controllers",
            "--liveness", f"http://127.0.0.1:{port}/healthz"]
    with KopfRunner(args, timeout=60) as runner:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert not runner.future.done(), f"operator exited during startup:\n{runner.output[-4000:]}"
            assert time.monotonic() < deadline, "operator not live in 60s"
            time.sleep(0.25)
        yield runner


@pytest.fixture
def operator_factory(cluster: Any, crds: list[str]) -> Callable[[str], AbstractContextManager[Any]]:
    """`with operator_factory(ns): ...` — start/stop the operator at will (restart tests)."""
    os.environ.setdefault("KUBECONFIG", str(cluster.kubeconfig))
    return run_operator
