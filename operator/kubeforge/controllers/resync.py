"""The safety-net resync, in place of kopf timers.

kopf (1.45) gives every object that has a timer or a daemon a finalizer (`requires_finalizer=True`, not
configurable), and a finalizer outlives the operator: with the operator down, deleting such an object, or
its namespace, hangs. So there are no per-object timers and no finalizers: one task per operator walks the
watch cache and passes the objects that are due:

* bounded kinds that are not settled, `resync_interval()` after their last pass (events do the real work);
* every ModelDeployment, `poll_interval` after its last pass (Triton readiness and canary promotion are
  time-based, and serving is never finished).

A pass that fails (`common.wake` logs it) is retried when the object is next due.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from . import common

TICK_MAX_S = 5.0
TICK_MIN_S = 0.2
CONCURRENCY = 64  # passes in flight per tick; the rest wait their turn
LONG_RUNNING = "ModelDeployment"

_task: asyncio.Task[None] | None = None
_stopped = False


def interval_of(kind: str) -> float:
    """Seconds between safety-net passes of one object of this kind."""
    return common.settings().poll_interval if kind == LONG_RUNNING else common.resync_interval()


def due(now: float, since: float) -> list[common.Key]:
    """Objects whose last pass (or, never passed, the loop's start `since`) is at least their interval ago."""
    out: list[common.Key] = []
    for key, body in common.reconcilable():
        if key[0] != LONG_RUNNING and common.settled(body):
            continue
        if now - common.last_pass.get(key, since) >= interval_of(key[0]):
            out.append(key)
    return out


async def _loop() -> None:
    since = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(key: common.Key) -> None:
        async with limit:
            await common.wake(*key)

    while True:
        shortest = min(interval_of(LONG_RUNNING), interval_of(""))
        await asyncio.sleep(min(TICK_MAX_S, max(TICK_MIN_S, shortest / 2)))
        keys = due(time.monotonic(), since)
        if keys:
            await asyncio.gather(*(one(k) for k in keys))


def reset() -> None:
    """Forget a loop left by an earlier run in this process (kopf startup); the next watch event starts one."""
    global _task, _stopped
    _task, _stopped = None, False


def ensure_started() -> None:
    """Start the loop unless it runs; called from kopf's watch-event handlers.

    Started there rather than at startup because the task inherits the caller's context, and kopf.event
    (every condition transition posts one) needs the Event queue that kopf puts into the context of the
    per-object tasks only.
    """
    global _task
    loop = asyncio.get_running_loop()
    if _stopped or (_task is not None and not _task.done() and _task.get_loop() is loop):
        return
    _task = loop.create_task(_loop(), name="kubeforge-resync")


async def stop() -> None:
    """Stop the loop (kopf cleanup)."""
    global _task, _stopped
    task, _task, _stopped = _task, None, True
    if task is not None and task.get_loop() is asyncio.get_running_loop():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
