"""Live progress: the operator scrapes the running stage's own metrics endpoint (the trainer's
ProgressReporter, in a real subprocess on a real port) into status.progress with percent and ETA."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeforge.controllers import cache, kube, progress, resync, state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STAGE = textwrap.dedent("""
    import sys, time
    from kubeforge.stage import StageConfig
    from kubeforge_trainer.runtime import ProgressReporter
    config = StageConfig.model_validate({
        "resource": {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                     "metadata": {"name": "t", "namespace": "ml"}, "spec": {}},
        "stage": "sft", "outputUri": "file:///tmp/out", "metricsPort": int(sys.argv[1])})
    reporter = ProgressReporter(config)
    reporter.update(step=3, total_steps=12, loss=1.5, learning_rate=0.001, tokens_per_second=250.0)
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def stage_port() -> Any:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", STAGE, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "stage metrics endpoint never answered"
                time.sleep(0.1)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_operator_reads_the_running_stages_progress(stage_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    started = datetime.now(UTC) - timedelta(seconds=30)
    pods = [{"metadata": {"name": "t-sft-g1-abc", "annotations": {}},
             "status": {"phase": "Running", "podIP": "127.0.0.1"}},
            {"metadata": {"name": "t-sft-g1-old"}, "status": {"phase": "Failed", "podIP": "10.0.0.9"}}]

    async def list_objects(_v: str, kind: str, ns: str, selector: str) -> list[dict[str, Any]]:
        assert (kind, ns, selector) == ("Pod", "ml", "batch.kubernetes.io/job-name=t-sft-g1")
        return pods

    monkeypatch.setattr(kube, "list_objects", list_objects)
    job = {"metadata": {"name": "t-sft-g1", "namespace": "ml"},
           "status": {"startTime": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "ready": 1}}

    async def twice() -> tuple[Any, Any]:
        state.configure()
        return await progress.read_progress(job, stage_port), await progress.read_progress(job, stage_port)

    live, again = asyncio.run(twice())
    assert live is not None
    assert (live["step"], live["totalSteps"], live["percent"]) == (3, 12, "25%")
    assert live["loss"] == 1.5 and live["learningRate"] == 0.001 and live["tokensPerSecond"] == 250.0
    assert 85 <= live["etaSeconds"] <= 100, "30 s for 3 of 12 steps: about 90 s left"
    assert again is not None and again["step"] == 3

    pods[0]["status"]["phase"] = "Pending"

    async def fresh() -> Any:
        state.configure()
        return await progress.read_progress(job, stage_port)

    assert asyncio.run(fresh()) is None, "no running pod: status left alone"


def _listing(lists: list[str]) -> Any:
    async def list_objects(*args: Any) -> list[dict[str, Any]]:
        lists.append(args[3])
        return [{"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "127.0.0.1"}}]
    return list_objects


def test_unreachable_pod_leaves_status_alone_and_is_not_tried_again_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod that does not answer (KWOK, a NetworkPolicy) costs one LIST and one scrape per backoff, not per
    pass: with 1,000 such Jobs the resync loop does not pass them for progress either."""
    lists: list[str] = []
    scraped: list[str] = []
    monkeypatch.setattr(kube, "list_objects", _listing(lists))

    async def silent(url: str) -> str:
        scraped.append(url)
        raise TimeoutError  # what a scrape of a pod that never answers ends with, after SCRAPE_TIMEOUT_S

    monkeypatch.setattr(progress, "_scrape", silent)
    job = {"metadata": {"name": "j", "namespace": "ml"}, "status": {"ready": 1}}

    async def scenario() -> tuple[Any, Any, bool, bool, float]:
        state.configure()
        cache.remember({"kind": "Job", **job})
        was_due = progress.readable("ml", "j")
        first = await progress.read_progress(job, 9)
        second = await progress.read_progress(job, 9)
        due = progress.readable("ml", "j")
        wait = state.current().scrapes[("ml", "j")][1] - time.monotonic()
        await state.current().api.close()
        return was_due, first, second, due, wait

    was_due, first, second, due, wait = asyncio.run(scenario())
    assert was_due, "a Ready pod, never tried: a progress read is due"
    assert first is None and second is None
    assert len(lists) == 1 and len(scraped) == 1, "the second read within the backoff neither lists pods nor scrapes"
    assert not due and wait > progress.UNREACHABLE_BACKOFF_S - 5

    async def not_ready() -> Any:
        state.configure()
        return await progress.read_progress({"metadata": {"name": "k", "namespace": "ml"}, "status": {}}, 9)

    assert asyncio.run(not_ready()) is None and len(lists) == 1, "no Ready pod in the Job's status: no LIST"


def test_a_ready_pod_whose_stage_is_still_starting_is_read_again_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage pod is Ready as soon as its container starts, seconds before the stage's metrics endpoint
    listens: the refused connection (a real one, on a free port) is tried again after STARTING_RETRY_S with
    the pod's IP kept, not after the 30 s backoff, which would miss a short stage's steps. Regression: the
    real-node pipeline's 40 s pretraining showed no live progress at all."""
    lists: list[str] = []
    monkeypatch.setattr(kube, "list_objects", _listing(lists))
    job = {"metadata": {"name": "j", "namespace": "ml"}, "status": {"ready": 1}}
    port = free_port()

    async def scenario() -> tuple[Any, bool, float, Any]:
        state.configure()
        cache.remember({"kind": "Job", **job})
        first = await progress.read_progress(job, port)
        due = progress.readable("ml", "j")
        ip, next_try = state.current().scrapes[("ml", "j")]
        wait = next_try - time.monotonic()
        await state.current().api.close()
        return first, due, wait, ip

    first, due, wait, ip = asyncio.run(scenario())
    assert first is None and not due
    assert 0 < wait <= progress.STARTING_RETRY_S, f"tried again in {wait:.1f} s"
    assert ip == "127.0.0.1" and len(lists) == 1, "the pod's IP is kept: the next read does not list pods"


def test_running_objects_are_resynced_at_the_progress_interval() -> None:
    running = {"status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]}}
    waiting = {"status": {"conditions": [{"type": "Succeeded", "status": "Unknown",
                                          "reason": "WaitingForDependencies"}]}}
    assert resync.running(running) and not resync.running(waiting) and not resync.running({})


def test_progress_passes_need_a_ready_pod_and_are_spread_when_many_stages_run() -> None:
    """A stage whose pod is pending gets no progress pass (only the safety-net resync); with many Ready
    stages at most PROGRESS_READS_PER_S progress passes fall due per second, not one per object every 5 s."""
    state.configure()
    conds = [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]
    n = int(resync.PROGRESS_READS_PER_S * resync.PROGRESS_INTERVAL_S * 4)  # 4x what the 5 s interval allows
    for i in range(n):
        cache.remember({"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                         "metadata": {"name": f"t{i}", "namespace": "ml", "resourceVersion": "1"},
                         "status": {"jobName": f"j{i}", "conditions": conds}})
        ready = {"ready": 1} if i % 2 == 0 else {"ready": 0}  # odd ones: the pod is still pending
        cache.remember({"kind": "Job", "metadata": {"name": f"j{i}", "namespace": "ml", "resourceVersion": "1"},
                         "status": ready})
    readers = n // 2
    spread = readers / resync.PROGRESS_READS_PER_S
    assert spread > resync.PROGRESS_INTERVAL_S
    assert resync.due(now=100.0 + resync.PROGRESS_INTERVAL_S, since=100.0) == []
    due = resync.due(now=100.0 + spread, since=100.0)
    assert sorted(int(k[2][1:]) for k in due) == list(range(0, n, 2)), "only the Ready ones, after the spread"
    assert spread < resync.resync_interval()
    assert len(resync.due(now=100.0 + resync.resync_interval(), since=100.0)) == n, "the safety net takes all"
