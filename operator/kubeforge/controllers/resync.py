"""The safety-net resync, in place of kopf timers.

kopf (1.45) gives every object that has a timer or a daemon a finalizer (`requires_finalizer=True`, not
configurable), and a finalizer outlives the operator: with the operator down, deleting such an object, or
its namespace, hangs. So there are no per-object timers and no finalizers: one task per operator walks the
watch cache and adds the objects that are due to the work queue:

* bounded kinds that are not settled, `resync_interval()` after their last pass (events do the real work);
* every ModelDeployment, `poll_interval` after its last pass (Triton readiness and canary promotion are
  time-based, and serving is never finished);
* objects whose stage runs with a Ready pod, `PROGRESS_INTERVAL_S` after their last pass, so
  status.progress stays live (unless their pod did not answer lately: progress.py backs off). With many
  such objects the interval grows so that at most `PROGRESS_READS_PER_S` progress passes are due per second
  (1,000 running stages: one read each 50 s), as a Prometheus scrape pool spreads its targets.

A failed pass is not the resync's business: the consumer re-adds it with backoff (workers.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from . import passes, progress
from .state import Key, current, settings
from .status import SUCCEEDED, find_condition, settled

TICK_MAX_S = 5.0
TICK_MIN_S = 0.2
LONG_RUNNING = "ModelDeployment"
PROGRESS_INTERVAL_S = 5.0
PROGRESS_READS_PER_S = 20.0


def resync_interval() -> float:
    """Seconds between safety-net passes of unfinished objects (events do the real work)."""
    return float(os.environ.get("KUBEFORGE_RESYNC_INTERVAL") or max(30.0, settings().poll_interval))


def interval_of(kind: str) -> float:
    """Seconds between safety-net passes of one object of this kind."""
    return settings().poll_interval if kind == LONG_RUNNING else resync_interval()


def running(body: dict[str, Any]) -> bool:
    """The object's stage Job runs (Succeeded=Unknown, reason Running)."""
    cond = find_condition((body.get("status") or {}).get("conditions"), SUCCEEDED)
    return cond is not None and cond.get("reason") == "Running"


def due(now: float, since: float) -> list[Key]:
    """Objects whose last pass (or, never passed, the loop's start `since`) is at least their interval ago."""
    candidates: list[tuple[Key, bool]] = []
    for key, body in passes.reconcilable():
        if key[0] != LONG_RUNNING and settled(body):
            continue
        live = running(body) and progress.readable(key[1], str((body.get("status") or {}).get("jobName") or ""))
        candidates.append((key, live))
    readers = sum(1 for _key, live in candidates if live)
    every = max(PROGRESS_INTERVAL_S, settings().poll_interval, readers / PROGRESS_READS_PER_S)
    last_pass = current().last_pass
    out: list[Key] = []
    for key, live in candidates:
        interval = min(interval_of(key[0]), every) if live else interval_of(key[0])
        if now - last_pass.get(key, since) >= interval:
            out.append(key)
    return out


async def run() -> None:
    """Forever: add what is due to the work queue."""
    since = time.monotonic()
    while True:
        shortest = min(interval_of(LONG_RUNNING), interval_of(""))
        await asyncio.sleep(min(TICK_MAX_S, max(TICK_MIN_S, shortest / 2)))
        for key in due(time.monotonic(), since):
            passes.wake(*key, low=True)
