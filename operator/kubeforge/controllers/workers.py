"""The work queue's consumers and the resync loop: the tasks that run passes.

`ensure_started` is called from kopf's watch-event handlers rather than at startup because tasks inherit
the caller's context, and kopf.event (every condition transition posts one) needs the Event queue that
kopf puts into the context of its per-object tasks only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import metrics
from . import passes, resync
from .state import Key, current
from .workqueue import WorkQueue

log = logging.getLogger("kubeforge.controllers")

async def consume(queue: WorkQueue[Key]) -> None:
    """One consumer: take a key, run its pass, re-add it with backoff if the pass failed."""
    while True:
        key = await queue.get()
        try:
            await passes.process(key)
        except Exception as exc:  # must not kill the consumer: the key comes back after its backoff
            delay = queue.add_rate_limited(key)
            metrics.QUEUE_RETRIES.labels(key[0]).inc()
            log.warning(f"reconcile of {' '.join(key)} failed ({type(exc).__name__}: {exc}); "
                        f"retry {queue.failures(key)} in {delay:.3g}s")
        else:
            queue.forget(key)
        finally:
            queue.done(key)
            metrics.QUEUE_DEPTH.set(len(queue))


def running() -> bool:
    """Whether this event loop has the consumers and the resync loop."""
    loop = asyncio.get_running_loop()
    tasks = current().tasks
    return bool(tasks) and all(not t.done() and t.get_loop() is loop for t in tasks)


def ensure_started() -> None:
    """Start the consumers and the resync loop unless they run (called from watch-event handlers)."""
    state = current()
    if state.stopped or running():
        return
    loop = asyncio.get_running_loop()
    state.tasks.clear()
    state.tasks.extend(loop.create_task(consume(state.queue), name=f"kubeforge-worker-{i}")
                       for i in range(state.settings.workers))
    state.tasks.append(loop.create_task(resync.run(), name="kubeforge-resync"))


async def stop() -> None:
    """Stop every task and release the run's resources (kopf cleanup)."""
    state = current()
    state.stopped = True
    tasks = [*state.tasks, *state.job_watches.values()]
    mine = [t for t in tasks if t.get_loop() is asyncio.get_running_loop()]
    state.tasks.clear()
    state.job_watches.clear()
    for task in mine:
        task.cancel()
    for task in mine:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await state.close()
