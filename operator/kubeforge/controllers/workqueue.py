"""A deduplicating, rate-limited work queue, with the semantics of client-go's workqueue.

Watch events, the dependency index and the resync loop only *add keys*; a fixed pool of consumers runs
the passes (workers.py). The guarantees that make level-triggered reconciles safe and cheap:

* a key waits in the queue at most once, however often it is added (a burst of watch events is one pass);
* a key is never processed by two consumers at once; added while processing, it is queued again when
  that pass ends (`done`), so the change that arrived mid-pass is never lost;
* a failed pass is re-added after a per-key exponential backoff (5 ms doubling up to 30 s, as
  controller-runtime's default rate limiter); a successful one resets it (`forget`);
* bookkeeping survives cancellation: `get` marks a key processing without awaiting after the dequeue,
  and consumers call `done` in `finally`;
* two priorities, as controller-runtime's priority queue: the safety-net resync and progress reads add
  `low=True` and wait behind everything a watch event, a dependency or a retry asked for, so a periodic
  sweep over 1,000 running objects does not delay the pass that creates a new object's Job. A key waiting
  at low priority moves up when it is added again at normal priority.

Pure asyncio: one instance per operator run (an operator restarted in the same process starts afresh).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

BASE_DELAY_S = 0.005
MAX_DELAY_S = 30.0
K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys to reconcile; see the module docstring for the contract."""

    def __init__(self, base_delay: float = BASE_DELAY_S, max_delay: float = MAX_DELAY_S) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._high: deque[K] = deque()  # in order of adding; may hold stale entries (skipped by `_pop`)
        self._low: deque[K] = deque()
        self._wakeup = asyncio.Event()
        # Wants a pass (queued, or re-queue once its pass ends) -> at normal (True) or low priority.
        self._dirty: dict[K, bool] = {}
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self.adds = 0  # every add() call (for metrics and tests: adds - passes = coalesced wakes)

    def add(self, key: K, low: bool = False) -> None:
        """Ask for a pass of `key` (no-op when one is already waiting at the same or a higher priority)."""
        self.adds += 1
        normal = not low
        waiting = self._dirty.get(key)
        if waiting is not None and (waiting or low):
            return
        self._dirty[key] = normal
        if key not in self._processing:
            self._enqueue(key)

    def _enqueue(self, key: K) -> None:
        (self._high if self._dirty[key] else self._low).append(key)
        self._wakeup.set()

    def _pop(self) -> K | None:
        """The next valid key: normal priority first; skips entries already taken or moved up."""
        while self._high:
            key = self._high.popleft()
            if key in self._dirty and key not in self._processing:
                return key
        while self._low:
            key = self._low.popleft()
            if self._dirty.get(key) is False and key not in self._processing:
                return key
        return None

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds; an earlier pending add of the same key wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def backoff(self, key: K) -> float:
        """The delay the next `add_rate_limited(key)` will use."""
        return float(min(self.max_delay, self.base_delay * 2.0 ** self._failures.get(key, 0)))

    def add_rate_limited(self, key: K) -> float:
        """Re-add a key whose pass failed, after its exponential backoff; returns the delay."""
        delay = self.backoff(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key's pass succeeded: its next failure starts the backoff from the bottom again."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        """Consecutive failed passes of `key`."""
        return self._failures.get(key, 0)

    async def get(self) -> K:
        """The next key to process; it is marked processing until `done(key)`."""
        while (key := self._pop()) is None:
            self._wakeup.clear()
            await self._wakeup.wait()
        # No await between the dequeue and these lines: cancellation cannot lose the key.
        self._processing.add(key)
        del self._dirty[key]
        return key

    def done(self, key: K) -> None:
        """The pass of `key` ended (well or not); re-queue it if it was added meanwhile."""
        self._processing.discard(key)
        if key in self._dirty:
            self._enqueue(key)

    def drop(self, key: K) -> None:
        """The object is gone: cancel its delayed add and forget its failures (a queued pass still runs
        and finds nothing)."""
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        self._failures.pop(key, None)

    def close(self) -> None:
        """Cancel every delayed add (operator stop)."""
        for _when, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def __len__(self) -> int:
        """Keys waiting for a consumer."""
        return len(self._dirty) - sum(1 for key in self._processing if key in self._dirty)

    @property
    def processing(self) -> int:
        """Keys being processed right now."""
        return len(self._processing)
