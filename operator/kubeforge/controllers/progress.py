"""Live progress of a running stage, read by the operator from the rank-0 pod's metrics endpoint.

The stage already serves its step, total steps, loss, learning rate and tokens/s as Prometheus gauges on
`StageConfig.metrics_port` (runtime.ProgressReporter). The operator scrapes that endpoint over the pod
network and writes `status.progress` (percent and ETA derived from the Job's start time), so pods need no
API credentials and nothing is written while nothing changes. Unreachable pods (KWOK, a NetworkPolicy,
a stage between two steps) leave the status as it is.
"""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..builders.common import JOB_NAME_LABEL
from ..stage import METRICS_PORT
from . import kube
from .common import parse_time

SCRAPE_TIMEOUT_S = 2.0
GAUGES = {
    "kubeforge_train_step": "step",
    "kubeforge_train_total_steps": "totalSteps",
    "kubeforge_train_loss": "loss",
    "kubeforge_train_learning_rate": "learningRate",
    "kubeforge_train_tokens_per_second": "tokensPerSecond",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The stage's progress gauges (status field name -> value) from a Prometheus text page."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        field = GAUGES.get(family.name)
        for sample in family.samples:
            if field is not None and sample.name == family.name:
                out[field] = float(sample.value)
    return out


def progress_of(gauges: dict[str, float], started: datetime | None, now: datetime) -> dict[str, Any] | None:
    """`status.progress` from scraped gauges: integers for steps, percent and ETA when both steps are known."""
    if not gauges:
        return None
    out: dict[str, Any] = {}
    for key, value in gauges.items():
        out[key] = int(value) if key in ("step", "totalSteps") else round(value, 6)
    step, total = out.get("step"), out.get("totalSteps")
    if step and total:
        out["percent"] = f"{min(100, int(100 * step / total))}%"
        if started is not None:
            elapsed = max((now - started).total_seconds(), 0.0)
            out["etaSeconds"] = round(elapsed / step * max(total - step, 0), 1)
    return out


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
        return str(resp.read().decode())


def _rank0_ip(pods: list[dict[str, Any]]) -> str | None:
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")]
    running.sort(key=lambda p: (p["metadata"].get("annotations") or {}).get(
        "batch.kubernetes.io/job-completion-index", "0"))
    return str(running[0]["status"]["podIP"]) if running else None


async def read_progress(job: dict[str, Any], port: int = METRICS_PORT) -> dict[str, Any] | None:
    """Live progress of a running Job's rank-0 pod, or None when it cannot be read now."""
    meta = job["metadata"]
    pods = await kube.list_objects("v1", "Pod", meta["namespace"], f"{JOB_NAME_LABEL}={meta['name']}")
    ip = _rank0_ip(pods)
    if ip is None:
        return None
    try:
        text = await asyncio.to_thread(_scrape, f"http://{ip}:{port}/metrics")
    except (OSError, ValueError):
        return None
    started = parse_time((job.get("status") or {}).get("startTime"))
    return progress_of(parse_metrics(text), started, datetime.now(UTC))
