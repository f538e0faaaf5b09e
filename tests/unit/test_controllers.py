"""Controller passes against an in-memory API server: cycles, bounded messages, per-generation conditions,
rejected children, no finalizers, the resync loop's choice of objects, the client's pool."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubeforge import controllers, kinds, stage
from kubeforge.builders.workloads import stage_file
from kubeforge.controllers import cache, deps, kube, passes, resync, stages, state, workers
from kubeforge.controllers.status import StatusWriter, find_condition, pass_event, settled

NS = "ml"
API = "kubeforge.io/v1alpha1"


class FakeApi:
    """Objects by (kind, namespace, name); records creates, status writes and Events."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.status_writes = 0
        self.events: list[tuple[str, str, str]] = []
        self.create_error: kube.KubeError | None = None
        self._rv = 0

    def put(self, kind: str, name: str, spec: dict[str, Any], generation: int = 1,
            conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        self._rv += 1
        old = self.objects.get((kind, NS, name))
        body: dict[str, Any] = {
            "apiVersion": API, "kind": kind, "spec": spec,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{kind}-{name}", "generation": generation,
                         "resourceVersion": str(self._rv)},
            "status": copy.deepcopy((old or {}).get("status") or {}),
        }
        if conditions is not None:
            body["status"]["conditions"] = conditions
        self.objects[(kind, NS, name)] = body
        cache.remember(copy.deepcopy(body))
        return body

    async def get_kubeforge(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    async def create(self, manifest: dict[str, Any]) -> bool:
        if self.create_error is not None and manifest["kind"] == "Job":
            raise self.create_error
        self.created.append(manifest)
        return True

    async def list_objects(self, *_: Any) -> list[dict[str, Any]]:
        return []

    async def delete(self, *_: Any) -> bool:
        return True

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           patch: dict[str, Any]) -> dict[str, Any]:
        self.status_writes += 1
        self._rv += 1
        obj = self.objects[(kind, namespace, name)]
        obj["status"] = {**(obj.get("status") or {}), **patch["status"]}
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return copy.deepcopy(obj)

    def event(self, body: Any, *, type: str, reason: str, message: str = "") -> None:
        self.events.append((body["metadata"]["name"], reason, message))

    def cond(self, kind: str, name: str, ctype: str) -> dict[str, Any]:
        return find_condition(self.objects[(kind, NS, name)]["status"].get("conditions"), ctype) or {}

    async def passes(self, kind: str, name: str, times: int = 1) -> None:
        for _ in range(times):
            await passes.run_pass(copy.deepcopy(self.objects[(kind, NS, name)]))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    monkeypatch.setenv("KUBEFORGE_METRICS_PORT", "0")
    fake = FakeApi()
    state.configure()
    for name in ("get_kubeforge", "get", "create", "list_objects", "delete", "patch_status"):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    monkeypatch.setattr(kopf, "event", fake.event)
    yield fake
    state.configure()


def succeeded(gen: int = 1) -> list[dict[str, Any]]:
    return [{"type": "Succeeded", "status": "True", "reason": "Completed", "message": "done",
             "observedGeneration": gen, "lastTransitionTime": "2026-01-01T00:00:00Z"}]


def tj_spec(model_ref: str | None) -> dict[str, Any]:
    model = {"ref": {"kind": "TrainingJob", "name": model_ref}} if model_ref else {"uri": "org/base"}
    return {"method": "sft", "model": model, "dataset": {"name": "ds"}}


DS_SPEC = {"task": "text", "source": {"uris": ["s3://raw/x.jsonl"]}}


def test_self_reference_is_a_cycle_with_a_stable_message(api: FakeApi) -> None:
    api.put("Dataset", "d", {"task": "text", "source": {"fromDataset": {"name": "d"}}})
    asyncio.run(api.passes("Dataset", "d", times=4))
    deps = api.cond("Dataset", "d", "DependenciesReady")
    assert (deps["status"], deps["reason"]) == ("False", "InvalidSpec")
    assert deps["message"] == "dependency cycle: Dataset/d -> Dataset/d"
    ok = api.cond("Dataset", "d", "Succeeded")
    assert (ok["status"], ok["reason"], ok["message"]) == ("False", "InvalidSpec", deps["message"])
    assert api.status_writes == 1, "later passes find nothing to change"
    assert not api.created
    assert not settled(api.objects[("Dataset", NS, "d")]), "another object's edit can break a cycle"


def test_two_object_cycle_named_from_each_side(api: FakeApi) -> None:
    api.put("Dataset", "ds", DS_SPEC, conditions=succeeded())
    api.put("TrainingJob", "a", tj_spec("b"))
    api.put("TrainingJob", "b", tj_spec("a"))
    for _ in range(3):
        asyncio.run(api.passes("TrainingJob", "a"))
        asyncio.run(api.passes("TrainingJob", "b"))
    assert api.cond("TrainingJob", "a", "DependenciesReady")["message"] == (
        "dependency cycle: TrainingJob/a -> TrainingJob/b -> TrainingJob/a")
    assert api.cond("TrainingJob", "b", "DependenciesReady")["message"] == (
        "dependency cycle: TrainingJob/b -> TrainingJob/a -> TrainingJob/b")
    assert api.cond("TrainingJob", "b", "Succeeded")["reason"] == "InvalidSpec"
    # Breaking the cycle on one side releases the other: b now waits for a, a runs.
    api.put("TrainingJob", "a", tj_spec(None), generation=2)
    asyncio.run(api.passes("TrainingJob", "a"))
    asyncio.run(api.passes("TrainingJob", "b"))
    assert api.cond("TrainingJob", "a", "JobCreated")["status"] == "True"
    assert api.cond("TrainingJob", "a", "DependenciesReady")["status"] == "True"
    waiting = api.cond("TrainingJob", "b", "DependenciesReady")
    assert (waiting["reason"], waiting["message"]) == (
        "WaitingForDependencies", "waiting for TrainingJob/a not yet succeeded (Running: Job a-sft-g2 is running)")


def test_longer_cycle_and_an_object_waiting_on_it(api: FakeApi) -> None:
    api.put("Dataset", "ds", DS_SPEC, conditions=succeeded())
    for me, parent in (("a", "b"), ("b", "c"), ("c", "a"), ("outside", "a")):
        api.put("TrainingJob", me, tj_spec(parent))
    for _ in range(3):
        for name in ("outside", "a", "b", "c"):
            asyncio.run(api.passes("TrainingJob", name))
    assert api.cond("TrainingJob", "c", "DependenciesReady")["message"] == (
        "dependency cycle: TrainingJob/c -> TrainingJob/a -> TrainingJob/b -> TrainingJob/c")
    # Not part of the cycle: blocked by a failed dependency, and the message quotes it without nesting.
    outside = api.cond("TrainingJob", "outside", "DependenciesReady")
    assert outside["reason"] == "DependencyFailed"
    assert outside["message"] == (
        "TrainingJob/a failed (InvalidSpec: dependency cycle: TrainingJob/a -> TrainingJob/b -> TrainingJob/c "
        "-> TrainingJob/a)")


def test_waiting_messages_do_not_copy_dependency_messages(api: FakeApi) -> None:
    api.put("Dataset", "ds", DS_SPEC)  # never succeeds
    api.put("TrainingJob", "base", tj_spec(None))
    api.put("TrainingJob", "mid", tj_spec("base"))
    api.put("TrainingJob", "top", tj_spec("mid"))
    for _ in range(5):
        for name in ("base", "mid", "top"):
            asyncio.run(api.passes("TrainingJob", name))
    top = api.cond("TrainingJob", "top", "DependenciesReady")["message"]
    assert top == "waiting for Dataset/ds not yet succeeded (not started); " \
        "TrainingJob/mid not yet succeeded (WaitingForDependencies)"


def test_new_generation_drops_the_previous_generations_conditions(api: FakeApi) -> None:
    api.put("Dataset", "ds", DS_SPEC, conditions=succeeded())
    api.put("TrainingJob", "t", tj_spec(None))
    asyncio.run(api.passes("TrainingJob", "t"))
    assert api.cond("TrainingJob", "t", "JobCreated")["observedGeneration"] == 1
    ready_since = api.cond("TrainingJob", "t", "DependenciesReady")["lastTransitionTime"]
    api.events.clear()
    # Generation 2 names a model that does not exist yet: no Job, so no JobCreated for it.
    api.put("TrainingJob", "t", tj_spec("missing"), generation=2)
    asyncio.run(api.passes("TrainingJob", "t"))
    conds = {c["type"]: c for c in api.objects[("TrainingJob", NS, "t")]["status"]["conditions"]}
    assert "JobCreated" not in conds
    assert conds["DependenciesReady"]["observedGeneration"] == 2
    assert conds["Succeeded"]["reason"] == "WaitingForDependencies"
    # Generation 3 is ready again: DependenciesReady=True is new (False before), JobCreated reappears.
    api.put("TrainingJob", "t", tj_spec(None), generation=3)
    asyncio.run(api.passes("TrainingJob", "t"))
    assert api.cond("TrainingJob", "t", "JobCreated")["observedGeneration"] == 3
    assert api.cond("TrainingJob", "t", "DependenciesReady")["lastTransitionTime"] >= ready_since


def test_condition_set_again_for_a_new_generation_keeps_its_transition_time() -> None:
    old = {"type": "DependenciesReady", "status": "True", "reason": "DependenciesSucceeded", "message": "m",
           "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    body = {"metadata": {"generation": 2}, "status": {"conditions": [old, {**old, "type": "JobCreated"}]}}
    w = StatusWriter.for_body(body)
    assert w.conditions == [] and set(w.stale) == {"DependenciesReady", "JobCreated"}
    w.set("DependenciesReady", "True", "DependenciesSucceeded", "m")
    assert w.conditions[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert w.conditions[0]["observedGeneration"] == 2
    assert w.transitions == [], "same status and reason: no Event"


def test_rejected_child_fails_the_generation(api: FakeApi) -> None:
    api.put("Dataset", "ds", DS_SPEC, conditions=succeeded())
    api.put("TrainingJob", "t", tj_spec(None))
    api.create_error = kube.KubeError(422, 'Job.batch "t-sft-g1" is invalid: spec.template: bad')
    asyncio.run(api.passes("TrainingJob", "t", times=2))
    ok = api.cond("TrainingJob", "t", "Succeeded")
    assert (ok["status"], ok["reason"]) == ("False", "ChildRejected")
    assert ok["message"] == ('Job t-sft-g1 rejected by the API server (HTTP 422): '
                             'Job.batch "t-sft-g1" is invalid: spec.template: bad')
    assert settled(api.objects[("TrainingJob", NS, "t")])
    assert api.status_writes == 1
    assert [(n, r) for n, r, _ in api.events] == [("t", "ChildRejected")], "one Event for the pass"
    assert f"Succeeded=False: {ok['message']}" in api.events[0][2]


def test_one_event_per_pass_leads_with_the_headline() -> None:
    dep = ("DependenciesReady", "True", "DependenciesSucceeded", "inputs ready")
    job = ("JobCreated", "True", "JobCreated", "created Job t-sft-g1")
    running = ("Succeeded", "Unknown", "Running", "")
    failed = ("Succeeded", "False", "BackoffLimitExceeded", "pod failed")
    done = ("Succeeded", "True", "Completed", "finished")
    assert pass_event([]) is None
    assert pass_event([dep, job, running]) == (
        "Normal", "JobCreated",
        "JobCreated=True: created Job t-sft-g1; DependenciesReady=True: inputs ready; Succeeded=Unknown")
    assert pass_event([running, failed])[:2] == ("Warning", "BackoffLimitExceeded")
    assert pass_event([("Passed", "True", "ThresholdsMet", ""), done])[:2] == ("Normal", "Completed")
    assert pass_event([("x", "y", "z", "m" * 2000), job])[2].startswith("JobCreated=True")
    assert len(pass_event([("x", "y", "z", "m" * 2000), job])[2]) == 1024


@pytest.mark.parametrize(("status", "message"), [(500, "etcd timeout"), (403, "exceeded quota: compute"),
                                                 (429, "too many requests")])
def test_transient_create_errors_are_retried(api: FakeApi, status: int, message: str) -> None:
    api.put("Dataset", "ds", DS_SPEC, conditions=succeeded())
    api.put("TrainingJob", "t", tj_spec(None))
    api.create_error = kube.KubeError(status, message)
    with pytest.raises(kube.KubeError):
        asyncio.run(api.passes("TrainingJob", "t"))
    assert api.status_writes == 0


def test_resync_picks_unsettled_objects_and_every_model_deployment(api: FakeApi) -> None:
    api.put("Dataset", "done", DS_SPEC, conditions=succeeded())
    api.put("Dataset", "busy", DS_SPEC)
    api.put("ModelDeployment", "md", {"model": {"uri": "org/m"}})
    cache.remember({"kind": "Job", "metadata": {"name": "j", "namespace": NS, "resourceVersion": "1"}})
    interval = resync.resync_interval()
    assert resync.due(now=100.0, since=100.0) == []
    due = resync.due(now=100.0 + interval, since=100.0)
    assert sorted(due) == [("Dataset", NS, "busy"), ("ModelDeployment", NS, "md")]
    state.current().last_pass[("Dataset", NS, "busy")] = 100.0 + interval
    assert ("Dataset", NS, "busy") not in resync.due(now=100.0 + interval + 1, since=100.0)


def test_no_handler_needs_a_finalizer_and_startup_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A finalizer blocks deletion (and namespace deletion) while the operator is down."""
    monkeypatch.setenv("KUBEFORGE_METRICS_PORT", "0")
    registry = kopf.get_default_registry()
    assert not list(registry._spawning.get_all_handlers()), "timers/daemons always add a finalizer (kopf 1.45)"
    assert not [h.id for h in registry._changing.get_all_handlers() if h.requires_finalizer]
    settings = kopf.OperatorSettings()
    settings.queueing.worker_limit = 64

    startup: Any = controllers.startup  # kopf's decorator types it as a generic activity
    cleanup: Any = controllers.cleanup

    async def start_and_stop() -> None:
        memo = kopf.Memo()
        await startup(settings=settings, memo=memo, logger=logging.getLogger("test"))
        run = getattr(memo, state.MEMO_FIELD)
        assert state.current() is run, "the startup handler binds the state it put into the memo"
        assert not workers.running(), "started by the first watch event, inside kopf's context"
        workers.ensure_started()
        tasks = list(run.tasks)
        assert len(tasks) == state.settings().workers + 1 and workers.running()
        workers.ensure_started()
        assert run.tasks == tasks
        await cleanup(memo=memo)
        assert not run.tasks and all(t.cancelled() for t in tasks)
        workers.ensure_started()
        assert not run.tasks, "not restarted after cleanup"

    asyncio.run(start_and_stop())
    assert settings.queueing.worker_limit is None
    assert settings.posting.reporting_component == "kubeforge-operator"
    assert settings.persistence.finalizer == "kubeforge.io/unused"  # removed from objects that still carry it


def test_consumers_run_in_kopfs_event_posting_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf.event needs the Event queue kopf puts into per-object task contexts; the consumers and the
    resync loop must inherit it."""
    from kopf._core.engines import posting

    seen: list[object] = []

    async def fake_consume(_queue: Any) -> None:
        seen.append(posting.event_queue_var.get(None))

    async def fake_resync() -> None:
        seen.append(posting.event_queue_var.get(None))

    monkeypatch.setattr(workers, "consume", fake_consume)
    monkeypatch.setattr(resync, "run", fake_resync)
    monkeypatch.setenv("KUBEFORGE_WORKERS", "3")
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()

    async def kopf_object_task() -> None:
        posting.event_queue_var.set(queue)
        workers.ensure_started()

    async def scenario() -> None:
        state.configure()
        await asyncio.create_task(kopf_object_task())
        assert len(state.current().tasks) == 4
        await asyncio.gather(*state.current().tasks)
        await workers.stop()

    asyncio.run(scenario())
    assert seen == [queue] * 4


def test_failed_pass_is_retried_with_backoff_and_a_cancelled_pass_loses_nothing(
        api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer re-adds a failed key with backoff, and a consumer cancelled mid-pass leaves the key
    neither stuck as queued nor processing (the old per-object lock + queued mark dropped every later wake)."""
    api.put("Dataset", "ds", DS_SPEC)
    calls: list[str] = []
    gate = asyncio.Event()

    async def flaky(key: state.Key) -> None:
        calls.append(key[2])
        if len(calls) == 1:
            raise RuntimeError("API server hiccup")
        if len(calls) == 2:
            await gate.wait()  # hangs until cancelled

    monkeypatch.setattr(passes, "process", flaky)

    async def scenario() -> None:
        q = state.queue()
        q.base_delay = 0.01
        consumer = asyncio.create_task(workers.consume(q))
        passes.wake("Dataset", NS, "ds")
        for _ in range(200):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.005)
        assert calls == ["ds", "ds"], "retried after its backoff"
        assert q.failures(("Dataset", NS, "ds")) == 1
        passes.wake("Dataset", NS, "ds")  # arrives while the pass runs: queued again after it
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert q.processing == 0 and len(q) == 1
        gate.set()
        consumer = asyncio.create_task(workers.consume(q))
        for _ in range(200):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.005)
        consumer.cancel()
        assert calls == ["ds", "ds", "ds"]
        assert q.failures(("Dataset", NS, "ds")) == 0

    asyncio.run(scenario())


def test_one_http_session_with_keep_alive_credentials_and_api_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's client: credentials from the kubeconfig, one keep-alive pool (every request of a run
    on the same connection while they come one at a time, never more than CONNECTION_LIMIT at once), the
    API server's message in KubeError, and a fresh session for an operator run in a new event loop."""
    from aiohttp import web

    peers: set[object] = set()
    auth: set[str | None] = set()
    active, most = 0, 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal active, most
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        auth.add(request.headers.get("Authorization"))
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.01)
        active -= 1
        if request.match_info.get("name", "taken") == "taken":
            return web.json_response({"kind": "Status", "message": 'jobs.batch "taken" already exists'}, status=409)
        if request.match_info["name"] == "bad":
            return web.json_response({"kind": "Status", "message": "spec.template: Invalid value"}, status=422)
        return web.json_response({"metadata": {"name": request.match_info["name"]}})

    async def scenario() -> None:
        nonlocal most
        peers.clear()
        most = 0
        app = web.Application()
        app.router.add_route("*", "/apis/batch/v1/namespaces/ns/jobs/{name}", handle)
        app.router.add_route("POST", "/apis/batch/v1/namespaces/ns/jobs", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
               "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
               "users": [{"name": "u", "user": {"token": "t0ken"}}],
               "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        try:
            state.configure(api=kube.Client())
            for i in range(10):
                assert await kube.get("batch/v1", "Job", "ns", f"j{i}") == {"metadata": {"name": f"j{i}"}}
            assert len(peers) == 1, "sequential requests reuse one keep-alive connection"
            await asyncio.gather(*(kube.get("batch/v1", "Job", "ns", f"p{i}")
                                   for i in range(3 * kube.CONNECTION_LIMIT)))
            assert 1 < most <= kube.CONNECTION_LIMIT
            assert auth == {"Bearer t0ken"}
            assert await kube.create({"apiVersion": "batch/v1", "kind": "Job",
                                      "metadata": {"name": "taken", "namespace": "ns"}}) is False
            with pytest.raises(kube.KubeError) as err:
                await kube.apply({"apiVersion": "batch/v1", "kind": "Job",
                                  "metadata": {"name": "bad", "namespace": "ns"}})
            assert err.value.status == 422 and err.value.message == "spec.template: Invalid value"
            assert kube.is_rejection(err.value)
            await workers.stop()  # closes the session
            assert state.current().api._session is None
        finally:
            await state.current().api.close()
            await runner.cleanup()

    asyncio.run(scenario())
    asyncio.run(scenario())  # a second run in a new loop: a new session, no "attached to another loop"


def test_stage_config_is_json_that_yaml_readers_and_the_stage_read_alike(tmp_path: Path) -> None:
    """The rendered config is JSON (the C encoder; PyYAML's representer cost ~7 % of the operator's CPU at
    1,000 objects); it stays a YAML document, and `load` reads it and hand-written YAML alike."""
    config = stage.StageConfig.model_validate({
        "resource": {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                     "metadata": {"name": "t", "namespace": "ml"}, "spec": {"lr": 1e-05, "name": "ünï"}},
        "stage": "sft", "outputUri": "file:///tmp/out"})
    text = config.dump()
    assert json.loads(text) == config.to_wire()
    assert yaml.safe_load(text)["resource"]["spec"]["name"] == "ünï"
    (tmp_path / "c.json").write_text(text)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.to_wire()))
    assert stage.StageConfig.load(tmp_path / "c.json") == config == stage.StageConfig.load(tmp_path / "c.yaml")
    assert stage.StageConfig.load(tmp_path / "c.json").resource["spec"]["lr"] == 1e-05


@pytest.mark.parametrize("kind", ["Dataset", "TrainingJob", "RewardModel", "RLHFJob", "Evaluation"])
@pytest.mark.parametrize("passed", [True, False])
def test_operator_and_local_runner_lift_the_same_status(kind: str, passed: bool) -> None:
    """One meaning per kind: the same stage result gives the same status fields and conditions on the
    cluster (controllers) and in `kubeforge run` (runner), beside test_local_stage_equals_pod."""
    from kubeforge.runner.state import ResourceState
    from kubeforge.stage import StageResult

    result = StageResult.model_validate({
        "succeeded": True, "artifact": {"uri": "file:///store/x", "digest": "sha256:1"},
        "metrics": {"accuracy": 0.5}, "progress": {"step": 3, "totalSteps": 3},
        "lineage": [{"kind": "Dataset", "name": "ds", "uri": "file:///store/ds", "digest": "sha256:2"}],
        "details": {"passed": passed, "failedThresholds": [] if passed else ["accuracy 0.5 (want >= 0.9)"],
                    "sampleCount": 4, "counts": {"train": 3}},
    })
    body = {"apiVersion": API, "kind": kind, "metadata": {"name": "x", "namespace": NS, "generation": 1},
            "status": {}}
    w = StatusWriter.for_body(body)
    resource = type("R", (), {"kind": kind})()
    stages.lift_workload(w, resource, result, "file:///store/x", {})  # type: ignore[arg-type]
    local = ResourceState(kind=kind, name="x", status=kinds.of(kind).lift(result, "file:///store/x", {}).fields)
    assert w.fields == local.status, "same status fields"
    for ctype, status, reason, message in kinds.of(kind).lift(result, "file:///store/x", {}).conditions:
        local.set_condition(ctype, status, reason, message)
    cluster = {c["type"]: (c["status"], c["reason"], c["message"]) for c in w.conditions}
    here = {c["type"]: (c["status"], c["reason"], c["message"]) for c in local.status.get("conditions") or []}
    assert cluster == here
    if kind == "Evaluation":
        assert cluster["Passed"][1] == ("ThresholdsMet" if passed else "ThresholdsFailed")


@pytest.mark.parametrize(("kind", "details", "where"), [
    ("Dataset", {"counts": {"train": "many"}}, "counts.train"),
    ("TrainingJob", {"progress": {"step": "three"}}, "progress.step"),
    ("Evaluation", {"sampleCount": "many"}, "sampleCount"),
])
def test_a_result_that_does_not_fit_the_status_schema_fails_alike_on_both(
    kind: str, details: dict[str, Any], where: str
) -> None:
    """The kind's typed status model checks a stage's result before it becomes status: a count that is not a
    number fails the generation with InvalidResult naming the field, on the cluster and locally, instead of a
    status patch the API server refuses on every retry."""
    from kubeforge import kinds
    from kubeforge.stage import StageResult

    result = StageResult.model_validate({"succeeded": True, "details": details})
    lifted = kinds.of(kind).lift(result, "file:///store/x", {})
    assert lifted.problem.startswith("the stage's result does not fit status: ")
    assert where in lifted.problem, lifted.problem
    body = {"apiVersion": API, "kind": kind, "metadata": {"name": "x", "namespace": NS, "generation": 1},
            "status": {}}
    w = StatusWriter.for_body(body)
    resource = type("R", (), {"kind": kind})()
    assert stages.lift_workload(w, resource, result, "file:///store/x", {}) == lifted.problem  # type: ignore[arg-type]
    assert not w.fields, "nothing of a refused result is written"


def test_every_kind_has_one_meaning_in_the_registry() -> None:
    """The registry covers the six kinds, each with its API model, typed status and main condition; the
    bounded ones are what the operator registers with kopf (controllers/bounded.py)."""
    from kubeforge import kinds
    from kubeforge.api.v1alpha1 import KINDS

    assert set(kinds.REGISTRY) == set(KINDS)
    for name, meaning in kinds.REGISTRY.items():
        assert meaning.model is KINDS[name] and meaning.name == name
        assert meaning.status is KINDS[name].model_fields["status"].annotation.__args__[0]  # type: ignore[union-attr]
    assert kinds.BOUNDED == ("Dataset", "TrainingJob", "RewardModel", "RLHFJob", "Evaluation")
    assert [k for k, m in kinds.REGISTRY.items() if m.reports_progress] == ["TrainingJob", "RewardModel", "RLHFJob"]
    assert kinds.of("ModelDeployment").main == "Ready"
    with pytest.raises(KeyError, match="not a Kubeforge kind"):
        kinds.of("Pod")


def test_reference_into_another_namespace_needs_its_grant(api: FakeApi) -> None:
    """A tenant cannot make the operator read another namespace's objects unless that Namespace (which
    tenants cannot edit) grants it with kubeforge.io/allow-references-from."""
    api.objects[("Dataset", "team-b", "ds")] = {
        "apiVersion": API, "kind": "Dataset", "spec": DS_SPEC, "status": {"conditions": succeeded()},
        "metadata": {"name": "ds", "namespace": "team-b", "uid": "u-ds", "generation": 1, "resourceVersion": "1"}}
    spec = tj_spec(None)
    spec["dataset"] = {"name": "ds", "namespace": "team-b"}
    api.put("TrainingJob", "t", spec)
    asyncio.run(api.passes("TrainingJob", "t"))
    ok = api.cond("TrainingJob", "t", "Succeeded")
    assert (ok["status"], ok["reason"]) == ("False", "ReferenceNotGranted")
    assert "kubeforge.io/allow-references-from=ml" in ok["message"] and "team-b" in ok["message"]
    assert not [c for c in api.created if c["kind"] == "Job"], "nothing read or run on the tenant's behalf"
    assert not settled(api.objects[("TrainingJob", NS, "t")]), "re-checked until a grant appears"

    api.objects[("Namespace", None, "team-b")] = {  # type: ignore[index]
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team-b", "annotations": {"kubeforge.io/allow-references-from": "other, ml"}}}
    asyncio.run(api.passes("TrainingJob", "t"))
    assert [c["metadata"]["name"] for c in api.created if c["kind"] == "Job"] == ["t-sft-g1"]
    assert api.cond("TrainingJob", "t", "DependenciesReady")["status"] == "True"


def test_a_child_of_an_earlier_object_with_the_same_name_is_not_adopted(
        api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleted and re-created under the same name, an object must not adopt the old object's Job (and so
    its result): the stale child is deleted and the pass retried by the queue."""
    api.put("Dataset", "ds", DS_SPEC, conditions=succeeded())
    api.put("TrainingJob", "t", tj_spec(None))
    old_job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "t-sft-g1", "namespace": NS, "resourceVersion": "1",
                            "ownerReferences": [{"kind": "TrainingJob", "name": "t", "uid": "uid-of-the-old-t",
                                                 "controller": True}]},
               "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    api.objects[("Job", NS, "t-sft-g1")] = old_job
    deleted: list[str] = []

    async def create(manifest: dict[str, Any]) -> bool:
        return (manifest["kind"], NS, manifest["metadata"]["name"]) not in api.objects

    async def delete(_v: str, kind: str, ns: str, name: str) -> bool:
        deleted.append(f"{kind}/{name}")
        return api.objects.pop((kind, ns, name), None) is not None

    monkeypatch.setattr(kube, "create", create)
    monkeypatch.setattr(kube, "delete", delete)
    with pytest.raises(stages.StaleChild, match="earlier object"):
        asyncio.run(api.passes("TrainingJob", "t"))
    assert deleted == ["Job/t-sft-g1"]
    assert api.cond("TrainingJob", "t", "Succeeded").get("status") != "True", "old result not adopted"


def _finish(api: FakeApi, kind: str, name: str, artifact: dict[str, Any] | None = None) -> None:
    """Mark an object Succeeded for its generation, as a finished stage leaves it."""
    body = api.objects[(kind, NS, name)]
    gen = body["metadata"]["generation"]
    others = [c for c in body["status"].get("conditions") or [] if c["type"] != "Succeeded"]
    body["status"].update(conditions=others + succeeded(gen), observedGeneration=gen)
    if artifact is not None:
        body["status"]["artifact"] = artifact
    cache.remember(copy.deepcopy(body))


def _config(job_child: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(stage_file(job_child)))


def test_a_moved_input_reruns_a_finished_object_into_its_own_folder(api: FakeApi) -> None:
    """Lineage stays true: the re-run is a new Job writing a new folder; `rerunOnInputChange: false` keeps."""
    api.put("Dataset", "ds", DS_SPEC)
    _finish(api, "Dataset", "ds", {"uri": "pvc://kubeforge-artifacts/ml/dataset/ds/g1", "digest": "sha256:one"})
    api.put("TrainingJob", "t", tj_spec(None))
    api.put("TrainingJob", "keep", {**tj_spec(None), "rerunOnInputChange": False})
    for name in ("t", "keep"):
        asyncio.run(api.passes("TrainingJob", name))
        _finish(api, "TrainingJob", name)
    first = [c for c in api.created if c["kind"] == "Job"]
    assert [_config(c)["outputUri"].rsplit("/", 2)[1:] for c in first] == [["t", "g1"], ["keep", "g1"]]
    api.created.clear()
    writes = api.status_writes
    asyncio.run(api.passes("TrainingJob", "t"))
    assert not api.created and api.status_writes == writes, "nothing moved: a finished object stays put"

    # The Dataset re-ran (generation 2) and now offers another artifact.
    api.put("Dataset", "ds", DS_SPEC, generation=2)
    _finish(api, "Dataset", "ds", {"uri": "pvc://kubeforge-artifacts/ml/dataset/ds/g2", "digest": "sha256:two"})
    asyncio.run(api.passes("TrainingJob", "t"))
    job = next(c for c in api.created if c["kind"] == "Job")
    assert job["metadata"]["name"] == "t-sft-g1-r1"
    assert job["metadata"]["labels"]["kubeforge.io/input-revision"] == "1"
    cfg = _config(job)
    assert cfg["outputUri"].endswith("/ml/trainingjob/t/g1-r1") and cfg["inputs"]["dataset"]["digest"] == "sha256:two"
    status = api.objects[("TrainingJob", NS, "t")]["status"]
    assert status["inputRevision"] == 1 and status["jobName"] == "t-sft-g1-r1"
    assert [e["digest"] for e in status["lineage"]] == ["sha256:two"]
    deps = api.cond("TrainingJob", "t", "DependenciesReady")
    assert deps["reason"] == "InputsChanged" and "Dataset ds now has sha256:two" in deps["message"]
    assert api.cond("TrainingJob", "t", "Succeeded")["status"] == "Unknown"
    assert not settled(api.objects[("TrainingJob", NS, "t")])
    assert stages.current_revision(api.objects[("TrainingJob", NS, "t")]) == 1

    api.created.clear()
    asyncio.run(api.passes("TrainingJob", "keep"))
    assert not api.created
    kept = api.cond("TrainingJob", "keep", "DependenciesReady")
    assert kept["reason"] == "InputsChanged" and "kept (spec.rerunOnInputChange: false)" in kept["message"]
    assert api.cond("TrainingJob", "keep", "Succeeded")["status"] == "True"
    writes = api.status_writes
    asyncio.run(api.passes("TrainingJob", "keep"))
    assert api.status_writes == writes, "reported once, not on every pass"


def test_dependency_index_follows_watch_events_and_wakes_dependents(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's own dependency index (no kopf index: kopf held every handler until all indices were
    filled, quadratic at a restart): a producer whose outcome moves wakes the objects that reference it now,
    not those that referenced it before an edit or a deletion."""
    monkeypatch.setattr(workers, "ensure_started", lambda: None)
    run_state = state.current()

    def drained() -> set[tuple[str, str, str]]:
        keys: set[tuple[str, str, str]] = set()

        async def take() -> None:
            while len(run_state.queue):
                key = await run_state.queue.get()
                keys.add(key)
                run_state.queue.done(key)
        asyncio.run(take())
        return keys

    def event(kind: str, name: str, spec: dict[str, Any], event_type: str = "MODIFIED", **kw: Any) -> None:
        body = api.put(kind, name, spec, **kw)
        asyncio.run(deps.on_object_event(copy.deepcopy(body), event_type, "Succeeded"))

    ds, tj = ("Dataset", NS, "ds"), ("TrainingJob", NS, "t")
    event("Dataset", "ds", DS_SPEC, "ADDED")
    event("TrainingJob", "t", tj_spec(None), "ADDED")
    event("TrainingJob", "u", tj_spec("t"), "ADDED")
    assert drained() == {ds, tj, ("TrainingJob", NS, "u")}, "every object is passed when first seen"
    assert run_state.dependents[ds] == {tj, ("TrainingJob", NS, "u")}
    assert run_state.dependents[tj] == {("TrainingJob", NS, "u")}

    event("Dataset", "ds", DS_SPEC, conditions=succeeded())
    assert drained() == {tj, ("TrainingJob", NS, "u")}, "the Dataset succeeded: both readers of it wake"
    event("Dataset", "ds", DS_SPEC, conditions=succeeded())
    assert drained() == set(), "nothing moved: nobody wakes"

    event("TrainingJob", "u", {**tj_spec(None), "dataset": {"name": "other"}}, generation=2)
    assert drained() == {("TrainingJob", NS, "u")}
    assert run_state.dependents[ds] == {tj} and tj not in run_state.dependents, "the edit dropped u's refs"
    event("TrainingJob", "t", tj_spec(None), "DELETED")
    assert ds not in run_state.dependents and tj not in run_state.depends_on
    event("Dataset", "ds", DS_SPEC, generation=2, conditions=[])
    assert drained() == {ds}, "its former readers are gone or moved"
