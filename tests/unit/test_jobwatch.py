"""The managed Jobs' list+watch (jobwatch.py) against an HTTP server that speaks the API server's list and
watch protocol: paged lists, a Job line longer than aiohttp's 64 KiB readline limit, bookmarks, a stream the
server ends (resumed from the last revision), 410 Gone (listed again; Jobs deleted meanwhile are noticed)
and a failing server (backoff, then recovery). The real API server runs the same code in tests/cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
import pytest
from aiohttp import web
from kubeforge import controllers  # noqa: F401  (registers the reconcilers the wakes go to)
from kubeforge.controllers import cache, jobwatch, kube, state, status
from kubeforge.controllers.state import current


def job(name: str, owner: str, rv: int, state: str | None = None, big: int = 0) -> dict[str, Any]:
    conditions = [{"type": state, "status": "True"}] if state else []
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "ml", "resourceVersion": str(rv),
                     "labels": {"kubeforge.io/kind": "TrainingJob", "kubeforge.io/owner": owner,
                                "app.kubernetes.io/managed-by": "kubeforge-operator"},
                     "annotations": {"pad": "x" * big} if big else {}},
        "spec": {"template": {}},
        "status": {"conditions": conditions, "ready": 0 if state else 1},
    }


class FakeAPI:
    """Jobs in one namespace; each watch request plays the next scripted stream (list of events, or an HTTP
    status), then ends."""

    def __init__(self, jobs: list[dict[str, Any]], streams: list[Any]) -> None:
        self.jobs = {j["metadata"]["name"]: j for j in jobs}
        self.streams = streams
        self.watches: list[dict[str, str]] = []
        self.lists: list[dict[str, str]] = []
        self.done = asyncio.Event()
        self.closing = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        assert q["labelSelector"] == "app.kubernetes.io/managed-by=kubeforge-operator"
        if q.get("watch") != "1":
            self.lists.append(q)
            items = sorted(self.jobs.values(), key=lambda j: j["metadata"]["name"])
            start, limit = int(q.get("continue") or 0), int(q["limit"])
            more = start + limit < len(items)
            page = items[start:start + limit]
            listed = [{k: v for k, v in j.items() if k not in ("apiVersion", "kind")} for j in page]
            return web.json_response({"kind": "JobList", "items": listed, "metadata": {
                "resourceVersion": "40", **({"continue": str(start + limit)} if more else {})}})
        self.watches.append(q)
        if not self.streams:
            self.done.set()
            await self.closing.wait()
        script = self.streams.pop(0)
        if isinstance(script, int):
            return web.json_response({"message": "the server is busy"}, status=script)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for event in script:
            await resp.write(json.dumps(event).encode() + b"\n")
        return resp


async def run_watch(api: FakeAPI) -> None:
    app = web.Application()
    app.router.add_get("/apis/batch/v1/namespaces/ml/jobs", api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.configure(api=kube.Client(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}")))
    try:
        jobwatch.ensure("ml")
        jobwatch.ensure("ml")  # already watching: no second task
        assert len(current().job_watches) == 1
        await asyncio.wait_for(api.done.wait(), 20)
    finally:
        for task in current().job_watches.values():
            task.cancel()
        await current().close()
        api.closing.set()
        await runner.cleanup()


def woken() -> set[str]:
    queue = current().queue
    return {key[2] for key in list(queue._dirty)}


def test_lists_in_pages_watches_resumes_and_relists_after_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobwatch, "PAGE_SIZE", 2)
    finished = job("a-sft-g1", "a", 50, "Complete", big=100_000)
    streams: list[Any] = [
        [{"type": "MODIFIED", "object": finished},
         {"type": "BOOKMARK", "object": {"kind": "Job", "metadata": {"resourceVersion": "60"}}}],
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}],
    ]
    api = FakeAPI([job("a-sft-g1", "a", 10), job("b-sft-g1", "b", 11, "Failed"), job("c-sft-g1", "c", 12)], streams)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        original = jobwatch.follow

        async def follow(namespace: str, revision: str) -> str:
            if len(api.watches) == 1:  # after the first stream: a's Complete cached, a woken, big line whole
                seen["a"] = cache.cached("Job", "ml", "a-sft-g1")
                seen["woken_after_stream"] = woken()
                del api.jobs["b-sft-g1"], api.jobs["c-sft-g1"]  # deleted while the next stream ends in Gone
            return await original(namespace, revision)

        monkeypatch.setattr(jobwatch, "follow", follow)
        await run_watch(api)
        seen["final_woken"] = woken()
        seen["cached"] = {k[2] for k in current().bodies if k[0] == "Job"}

    asyncio.run(scenario())
    # Two pages (limit 2, then continue), and the initial listing woke the owner of the finished Job only.
    assert [q.get("continue") for q in api.lists[:2]] == [None, "2"]
    assert [q["limit"] for q in api.lists] == ["2"] * len(api.lists)
    # The first watch starts at the list's revision, the second from the bookmark, the third after a relist.
    assert [q["resourceVersion"] for q in api.watches] == ["40", "60", "40"]
    assert all(q["allowWatchBookmarks"] == "true" for q in api.watches)
    assert len(api.lists) == 3  # 2 pages of 3 Jobs at start; 1 Job left after Gone: 1 page
    a = seen["a"]
    assert a is not None and a["metadata"]["annotations"]["pad"] == "x" * 100_000
    assert status.job_state(a)[0] == "Complete"
    assert "spec" not in a  # the cache keeps a slim Job
    assert seen["woken_after_stream"] == {"a", "b"}  # b: Failed at the first listing; a: its Complete event
    assert "c" in seen["final_woken"]  # deleted while the watch was gone: noticed by the relist
    assert seen["cached"] == {"a-sft-g1"}


def test_a_failing_server_is_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    done = job("d-sft-g1", "d", 70, "Complete")
    api = FakeAPI([job("d-sft-g1", "d", 10)], [500, 500, [{"type": "MODIFIED", "object": done}]])

    async def scenario() -> set[str]:
        await run_watch(api)
        return woken()

    with caplog.at_level("WARNING", logger="kubeforge.controllers"):
        assert "d" in asyncio.run(scenario())
    waits = [r.getMessage().rsplit("again in ", 1)[1] for r in caplog.records if "again in" in r.getMessage()]
    assert waits == ["0.5s", "1s"]  # exponential; the stream that worked reset it
    assert "HTTP 500: the server is busy" in caplog.text
    assert [q["resourceVersion"] for q in api.watches] == ["40", "40", "40", "70"]
