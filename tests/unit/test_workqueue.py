"""The work queue's contract (client-go semantics): dedup, one pass per key at a time, re-add after a
pass, per-key exponential backoff, delayed adds, cancellation safety."""

from __future__ import annotations

import asyncio

import pytest
from kubeforge.controllers.workqueue import WorkQueue


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_adds_of_a_waiting_key_coalesce() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        for _ in range(5):
            q.add("a")
        q.add("b")
        assert len(q) == 2 and q.adds == 6
        assert await q.get() == "a"
        assert await q.get() == "b"
    run(scenario())


def test_a_key_added_while_processing_waits_for_done() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        key = await q.get()
        q.add("a")
        q.add("a")
        assert len(q) == 0, "never handed to a second consumer while processing"
        q.done(key)
        assert len(q) == 1
        assert await q.get() == "a"
        q.done("a")
        assert len(q) == 0
    run(scenario())


def test_backoff_doubles_per_failure_caps_and_resets() -> None:
    q: WorkQueue[str] = WorkQueue(base_delay=0.005, max_delay=30.0)
    delays = []
    for _ in range(16):
        delays.append(q.backoff("a"))
        q._failures["a"] = q._failures.get("a", 0) + 1
    assert delays[:4] == pytest.approx([0.005, 0.01, 0.02, 0.04])
    assert delays[-1] == 30.0 and max(delays) == 30.0
    assert q.backoff("b") == 0.005, "per key"
    q.forget("a")
    assert q.backoff("a") == 0.005


def test_rate_limited_add_arrives_after_its_delay_and_earliest_delayed_add_wins() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue(base_delay=0.05)
        q.add_rate_limited("a")
        assert len(q) == 0
        await asyncio.sleep(0.1)
        assert len(q) == 1 and q.failures("a") == 1
        q.add_after("b", 10.0)
        q.add_after("b", 0.02)
        await asyncio.sleep(0.06)
        assert len(q) == 2
        q.add_after("c", 0.02)
        q.drop("c")
        await asyncio.sleep(0.05)
        assert len(q) == 2, "a dropped key's delayed add is cancelled"
    run(scenario())


def test_cancelled_waiting_consumer_does_not_lose_a_key() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        waiter = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        q.add("a")
        assert await asyncio.wait_for(q.get(), 1) == "a"
    run(scenario())


def test_low_priority_waits_behind_normal_and_moves_up_when_added_again() -> None:
    """The resync's sweep (low) never delays a pass a watch event asked for; a swept key that a watch event
    also wants moves up; neither a duplicate nor a lost pass comes of it."""
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        for key in ("sweep-1", "sweep-2", "sweep-3"):
            q.add(key, low=True)
        q.add("new")
        q.add("sweep-2")  # a watch event for an object the sweep had queued: moves up
        q.add("new", low=True)  # a later sweep does not move a waiting key down
        assert len(q) == 4
        order = []
        while len(q):
            key = await q.get()
            order.append(key)
            q.done(key)
        assert order == ["new", "sweep-2", "sweep-1", "sweep-3"]
        assert len(q) == 0 and not q.processing
        q.add("x", low=True)
        key = await q.get()
        q.add("x")  # wanted again while its low pass runs: one more pass, at normal priority
        q.add("y", low=True)
        q.done(key)
        assert [await q.get(), await q.get()] == ["x", "y"]
    run(scenario())


def test_waiting_consumers_wake_for_either_priority() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        consumers = [asyncio.create_task(q.get()) for _ in range(3)]
        await asyncio.sleep(0)
        q.add("a", low=True)
        q.add("b")
        done, pending = await asyncio.wait(consumers, timeout=1)
        assert sorted(t.result() for t in done) == ["a", "b"] and len(pending) == 1
        q.add("c", low=True)
        assert await asyncio.wait_for(pending.pop(), 1) == "c"
    run(scenario())
