"""Live progress of a running stage, read by the operator from the rank-0 pod's metrics endpoint.

The stage already serves its step, total steps, loss, learning rate and tokens/s as Prometheus gauges on
`StageConfig.metrics_port` (runtime.ProgressReporter). The operator scrapes that endpoint over the pod
network and writes `status.progress` (percent and ETA derived from the Job's start time), so pods need no
API credentials and nothing is written while nothing changes. Unreachable pods (KWOK, a NetworkPolicy,
a stage between two steps) leave the status as it is.

Cheap at scale: the rank-0 pod's IP is listed once per Job and remembered (OperatorState.scrapes), the
scrape goes through the run's aiohttp session (no thread, 2 s at most), and a Job whose pod did not answer
is not tried again for UNREACHABLE_BACKOFF_S, during which the resync loop does not pass it for progress
either. So 1,000 running Jobs on fake (KWOK) or firewalled nodes cost no pod LIST and no scrape per tick.
A refused connection is different: the pod is there and Ready (it has no readiness probe) but its stage is
still importing its libraries, so it is tried again after STARTING_RETRY_S, keeping its IP; a 30 s wait
there would miss most of a short stage's steps.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..builders.naming import JOB_NAME_LABEL
from ..stage import METRICS_PORT
from . import kube
from .cache import cached
from .state import current
from .status import parse_time

SCRAPE_TIMEOUT_S = 2.0
# A Job whose pod did not answer (or has no running pod yet) is tried again after this long.
UNREACHABLE_BACKOFF_S = 30.0
NO_POD_RETRY_S = 5.0
STARTING_RETRY_S = 3.0
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


async def _scrape(url: str) -> str:
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
    async with current().api.session().get(url, timeout=timeout) as resp:
        resp.raise_for_status()
        return await resp.text()


def _rank0_ip(pods: list[dict[str, Any]]) -> str | None:
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")]
    running.sort(key=lambda p: (p["metadata"].get("annotations") or {}).get(
        "batch.kubernetes.io/job-completion-index", "0"))
    return str(running[0]["status"]["podIP"]) if running else None


def readable(namespace: str, job_name: str) -> bool:
    """Whether a progress read of this Job can give anything now: the watch cache shows a Ready pod in the
    Job's status (a pending or unschedulable pod has nothing to serve), and it is not backing off after an
    unanswered scrape."""
    job = cached("Job", namespace, job_name)
    if job is None or not (job.get("status") or {}).get("ready"):
        return False
    return time.monotonic() >= current().scrapes.get((namespace, job_name), (None, 0.0))[1]


def forget(namespace: str, job_name: str) -> None:
    """Drop what is remembered of a Job that no longer runs."""
    current().scrapes.pop((namespace, job_name), None)


async def read_progress(job: dict[str, Any], port: int = METRICS_PORT) -> dict[str, Any] | None:
    """Live progress of a running Job's rank-0 pod, or None when it cannot be read now."""
    meta = job["metadata"]
    key = (str(meta["namespace"]), str(meta["name"]))
    scrapes = current().scrapes
    ip, next_try = scrapes.get(key, (None, 0.0))
    now = time.monotonic()
    if now < next_try:
        return None
    if ip is None:
        if not (job.get("status") or {}).get("ready"):  # no pod Ready yet (the Job's own count): no LIST
            return None
        pods = await kube.list_objects("v1", "Pod", key[0], f"{JOB_NAME_LABEL}={key[1]}")
        ip = _rank0_ip(pods)
        if ip is None:
            scrapes[key] = (None, now + NO_POD_RETRY_S)
            return None
    try:
        text = await _scrape(f"http://{ip}:{port}/metrics")
    except aiohttp.ClientConnectorError as err:
        if isinstance(err.os_error, ConnectionRefusedError):  # the pod answered: its stage is not listening yet
            scrapes[key] = (ip, now + STARTING_RETRY_S)
        else:
            scrapes[key] = (None, now + UNREACHABLE_BACKOFF_S)
        return None
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        scrapes[key] = (None, now + UNREACHABLE_BACKOFF_S)  # the pod may be gone: list again next time
        return None
    scrapes[key] = (ip, 0.0)
    started = parse_time((job.get("status") or {}).get("startTime"))
    return progress_of(parse_metrics(text), started, datetime.now(UTC))
