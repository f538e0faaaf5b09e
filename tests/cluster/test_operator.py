"""The operator against the real test control plane (kube-apiserver + controllers, KWOK nodes and pods).

KWOK runs no containers: Jobs complete (or fail, with pod annotation kubeforge.io/test-fail) without a
stage writing a termination message. Evaluation results are injected with the operator's test hook
(KUBEFORGE_TEST_HOOKS=1): a StageResult JSON in the pod annotation `kubeforge.io/result`, put on the pod
template through the object's `kubeforge.io/pod-annotations` annotation.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge.stage import StageResult

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "examples" / "pipeline"
POD_ANNOTATIONS = "kubeforge.io/pod-annotations"
EXPECTED_JOBS = {
    "corpus-prepare-g1", "instructions-prepare-g1", "preferences-prepare-g1", "base-lm-pretrain-g1",
    "chat-sft-sft-g1", "helpfulness-rm-reward-g1", "chat-grpo-rlhf-g1", "chat-grpo-eval-evaluate-g1",
    "chat-convert-g1",
}
# Job → the Jobs whose completion it must wait for (from the pipeline's references).
JOB_DEPS = {
    "base-lm-pretrain-g1": ["corpus-prepare-g1"],
    "chat-sft-sft-g1": ["base-lm-pretrain-g1", "instructions-prepare-g1"],
    "helpfulness-rm-reward-g1": ["chat-sft-sft-g1", "preferences-prepare-g1"],
    "chat-grpo-rlhf-g1": ["chat-sft-sft-g1", "helpfulness-rm-reward-g1", "instructions-prepare-g1"],
    "chat-grpo-eval-evaluate-g1": ["chat-grpo-rlhf-g1", "instructions-prepare-g1"],
    "chat-convert-g1": ["chat-grpo-rlhf-g1"],
}


def eval_result(passed: bool) -> str:
    """What the evaluate stage would write to its termination message."""
    return StageResult(
        succeeded=True,
        metrics={"rougeL": 0.31 if passed else 0.05, "bleu": 0.2, "exact_match": 0.1},
        details={"passed": passed, "failedThresholds": [] if passed else ["rougeL >= 0.2"], "sampleCount": 12},
    ).termination_message()


def pipeline_docs(namespace: str, *, eval_passes: bool = True) -> list[dict[str, Any]]:
    docs = [d for f in sorted(PIPELINE.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Evaluation":
            doc["metadata"]["annotations"] = {
                POD_ANNOTATIONS: json.dumps({"kubeforge.io/result": eval_result(eval_passes)})
            }
    return docs


def apply(cluster: Any, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def get(cluster: Any, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def items(cluster: Any, ns: str, kind: str) -> list[dict[str, Any]]:
    return list(json.loads(cluster.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"])


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180, runner: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if runner is not None and runner.future.done():
            raise AssertionError(f"operator exited while waiting for {what}:\n{runner.output[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


class JobRecorder:
    """Watch Jobs in a namespace; record the stream position of each Job's creation and completion.

    A watch delivers events in the order the API server committed them, so `created[b] > completed[a]`
    proves Job b was created after Job a had completed.
    """

    def __init__(self, namespace: str) -> None:
        from kubernetes import client, watch

        self.created: dict[str, int] = {}
        self.completed: dict[str, int] = {}
        self._watch = watch.Watch()
        self._api = client.BatchV1Api()
        self._ns = namespace
        self._seq = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the stream is cut when stop() is called
            self._consume()

    def _consume(self) -> None:
        for event in self._watch.stream(self._api.list_namespaced_job, self._ns, timeout_seconds=900):
            job = event["object"]
            name = job.metadata.name
            self._seq += 1
            if event["type"] == "ADDED":
                self.created.setdefault(name, self._seq)
            conds = (job.status.conditions if job.status else None) or []
            if any(c.type == "Complete" and c.status == "True" for c in conds):
                self.completed.setdefault(name, self._seq)

    def stop(self) -> None:
        self._watch.stop()


def complete_pipeline_checks(cluster: Any, ns: str, runner: Any = None) -> dict[str, Any]:
    """Wait until the ModelDeployment serves; check statuses, lineage and single Jobs."""
    md = wait_for(
        "ModelDeployment chat Ready=True",
        lambda: (o := get(cluster, ns, "modeldeployment", "chat")) and cond(o, "Ready").get("status") == "True" and o,
        timeout=300, runner=runner,
    )
    jobs = items(cluster, ns, "jobs")
    names = [j["metadata"]["name"] for j in jobs]
    assert sorted(names) == sorted(EXPECTED_JOBS), "exactly one Job per object and generation"
    for kind, name in [("dataset", "corpus"), ("trainingjob", "base-lm"), ("trainingjob", "chat-sft"),
                       ("rewardmodel", "helpfulness-rm"), ("rlhfjob", "chat-grpo"), ("evaluation", "chat-grpo-eval")]:
        obj = get(cluster, ns, kind, name)
        assert obj is not None
        ok = cond(obj, "Succeeded")
        assert ok["status"] == "True", (kind, name, obj.get("status"))
        assert ok["observedGeneration"] == obj["metadata"]["generation"] == obj["status"]["observedGeneration"]
        assert cond(obj, "DependenciesReady")["status"] == "True"
        assert cond(obj, "JobCreated")["status"] == "True"
    sft = get(cluster, ns, "trainingjob", "chat-sft")
    assert sft is not None
    assert sft["status"]["artifact"]["uri"] == f"pvc://kubeforge-artifacts/{ns}/trainingjob/chat-sft/g1"
    lineage = {(e["kind"], e["name"]) for e in sft["status"]["lineage"]}
    assert lineage == {("TrainingJob", "base-lm"), ("Dataset", "instructions")}
    ds = get(cluster, ns, "dataset", "corpus")
    assert ds is not None and ds["status"]["artifactUri"] == f"pvc://kubeforge-artifacts/{ns}/dataset/corpus/g1"
    assert ds["status"]["artifact"]["uri"] == ds["status"]["artifactUri"], "Dataset reports artifact like every kind"
    ev = get(cluster, ns, "evaluation", "chat-grpo-eval")
    assert cond(ev, "Passed")["status"] == "True"
    assert ev is not None and ev["status"]["metrics"]["rougeL"] == pytest.approx(0.31)
    assert ev["status"]["sampleCount"] == 12
    assert md["status"]["servedVersion"] == "g1"
    assert md["status"]["endpoints"]["grpc"] == f"chat.{ns}.svc:8001"
    assert md["status"]["readyReplicas"] >= 1
    assert cond(md, "ModelExported")["status"] == "True"
    deployments = [d["metadata"]["name"] for d in items(cluster, ns, "deployments")]
    assert deployments == ["chat"]
    assert get(cluster, ns, "service", "chat") is not None
    assert get(cluster, ns, "hpa", "chat") is not None
    return md


def test_pipeline_completes_in_dependency_order(
    cluster: Any, namespace: str, claims: list[str], operator_factory: Any
) -> None:
    recorder = JobRecorder(namespace)
    try:
        with operator_factory(namespace) as runner:
            apply(cluster, pipeline_docs(namespace))
            md = complete_pipeline_checks(cluster, namespace, runner)
    finally:
        recorder.stop()
    for job, deps in JOB_DEPS.items():
        for dep in deps:
            assert recorder.created[job] > recorder.completed[dep], f"{job} was created before {dep} completed"
    # Serving only after the gate opened: the Deployment is younger than the Evaluation's Passed condition.
    ev = get(cluster, namespace, "evaluation", "chat-grpo-eval")
    deploy = get(cluster, namespace, "deployment", "chat")
    assert deploy is not None
    assert deploy["metadata"]["creationTimestamp"] >= cond(ev, "Passed")["lastTransitionTime"]
    assert deploy["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    # Pod Security "restricted" is enforced in this namespace: every Job really got its pods admitted.
    pods = items(cluster, namespace, "pods")
    jobs_with_pods = {p["metadata"]["labels"].get("batch.kubernetes.io/job-name") for p in pods}
    assert jobs_with_pods >= EXPECTED_JOBS
    assert any(p["metadata"]["name"].startswith("chat-") and "kubeforge.io/track" in p["metadata"]["labels"]
               for p in pods), "Triton pods admitted"
    events = items(cluster, namespace, "events")
    assert any(e["reason"] == "JobCreated" and e["involvedObject"]["name"] == "chat-sft" for e in events)


def test_gate_failure_blocks_serving(cluster: Any, namespace: str, claims: list[str], operator_factory: Any) -> None:
    with operator_factory(namespace) as runner:
        apply(cluster, pipeline_docs(namespace, eval_passes=False))
        md = wait_for(
            "ModelDeployment blocked by the gate",
            lambda: (o := get(cluster, namespace, "modeldeployment", "chat"))
            and cond(o, "Ready").get("reason") == "GateFailed" and o,
            timeout=300, runner=runner,
        )
        time.sleep(3)  # a few more polls: still nothing served
        assert items(cluster, namespace, "deployments") == []
        assert get(cluster, namespace, "service", "chat") is None
    ready = cond(md, "Ready")
    assert ready["status"] == "False"
    assert "Evaluation/chat-grpo-eval" in ready["message"] and "rougeL >= 0.2" in ready["message"]
    assert cond(md, "DependenciesReady")["reason"] == "GateFailed"
    ev = get(cluster, namespace, "evaluation", "chat-grpo-eval")
    assert cond(ev, "Passed")["status"] == "False" and cond(ev, "Succeeded")["status"] == "True"


def test_failed_pod_fails_kind_and_blocks_dependents(
    cluster: Any, namespace: str, claims: list[str], operator_factory: Any
) -> None:
    docs = pipeline_docs(namespace)[:4]  # three Datasets + base-lm
    corpus = docs[0]
    assert corpus["metadata"]["name"] == "corpus"
    corpus["metadata"]["annotations"] = {POD_ANNOTATIONS: json.dumps({
        "kubeforge.io/test-fail": "true", "kubeforge.io/test-fail-message": "corpus shard 3 is corrupt",
    })}
    with operator_factory(namespace) as runner:
        apply(cluster, docs)
        ds = wait_for(
            "Dataset corpus Succeeded=False",
            lambda: (o := get(cluster, namespace, "dataset", "corpus"))
            and cond(o, "Succeeded").get("status") == "False" and o,
            timeout=240, runner=runner,
        )
        tj = wait_for(
            "TrainingJob base-lm DependencyFailed",
            lambda: (o := get(cluster, namespace, "trainingjob", "base-lm"))
            and cond(o, "Succeeded").get("reason") == "DependencyFailed" and o,
            timeout=60, runner=runner,
        )
    failed = cond(ds, "Succeeded")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "corpus shard 3 is corrupt" in failed["message"]
    assert "Dataset/corpus failed" in cond(tj, "DependenciesReady")["message"]
    assert get(cluster, namespace, "job", "base-lm-pretrain-g1") is None, "no Job for a blocked dependent"
    events = items(cluster, namespace, "events")
    assert any(e["type"] == "Warning" and e["involvedObject"]["name"] == "corpus"
               and e["reason"] == "BackoffLimitExceeded" for e in events)


def test_invalid_spec_reported_not_crashing(
    cluster: Any, namespace: str, claims: list[str], operator_factory: Any
) -> None:
    docs = pipeline_docs(namespace)[:2]
    docs[1]["metadata"]["annotations"] = {POD_ANNOTATIONS: "not json"}
    with operator_factory(namespace) as runner:
        apply(cluster, docs)
        ds = wait_for(
            "InvalidSpec",
            lambda: (o := get(cluster, namespace, "dataset", "instructions"))
            and cond(o, "Succeeded").get("reason") == "InvalidSpec" and o,
            timeout=60, runner=runner,
        )
        wait_for("corpus succeeds anyway",
                 lambda: cond(get(cluster, namespace, "dataset", "corpus"), "Succeeded").get("status") == "True",
                 timeout=60, runner=runner)
    assert "kubeforge.io/pod-annotations" in cond(ds, "Succeeded")["message"]


def test_restart_safety(cluster: Any, namespace: str, claims: list[str], operator_factory: Any) -> None:
    """Stop the operator at several points of a running pipeline; it finishes with no duplicates or lost status."""
    apply(cluster, pipeline_docs(namespace))
    stop_points = [
        lambda: get(cluster, namespace, "job", "corpus-prepare-g1") is not None,
        lambda: get(cluster, namespace, "job", "chat-sft-sft-g1") is not None,
        lambda: cond(get(cluster, namespace, "rlhfjob", "chat-grpo"), "JobCreated").get("status") == "True",
    ]
    for point in stop_points:
        with operator_factory(namespace) as runner:
            wait_for("stop point", point, timeout=180, runner=runner)
    with operator_factory(namespace) as runner:
        complete_pipeline_checks(cluster, namespace, runner)
        before = {j["metadata"]["name"]: j["metadata"]["uid"] for j in items(cluster, namespace, "jobs")}
        sft_status = get(cluster, namespace, "trainingjob", "chat-sft")["status"]  # type: ignore[index]
    # One more restart of a finished pipeline: nothing re-runs, status unchanged.
    with operator_factory(namespace):
        time.sleep(4)
        after = {j["metadata"]["name"]: j["metadata"]["uid"] for j in items(cluster, namespace, "jobs")}
        assert after == before
        again = get(cluster, namespace, "trainingjob", "chat-sft")
        assert again is not None
        assert again["status"]["conditions"] == sft_status["conditions"]
        assert again["status"]["startTime"] == sft_status["startTime"]


def _succeeded_dataset(cluster: Any, ns: str, name: str = "corpus") -> None:
    """A Dataset whose Succeeded=True is already written (settled: the operator starts no Job for it)."""
    apply(cluster, [{"apiVersion": "kubeforge.io/v1alpha1", "kind": "Dataset",
                     "metadata": {"name": name, "namespace": ns},
                     "spec": {"task": "instruction", "source": {"uris": ["s3://raw/corpus.jsonl"]}}}])
    status = {"status": {"observedGeneration": 1, "artifactUri": f"s3://store/{name}", "conditions": [
        {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "", "observedGeneration": 1,
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    cluster.kubectl("patch", "dataset", name, "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))


def _training_job(ns: str, name: str, model: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": ns},
            "spec": {"method": "sft", "model": model or {"uri": "hf://org/tiny"}, "dataset": {"name": "corpus"},
                     "resources": {"cpu": "100m", "memory": "128Mi"}}}


def test_more_objects_than_kopf_workers_before_start(cluster: Any, namespace: str, operator_factory: Any) -> None:
    """80 TrainingJobs exist before the operator starts; each gets its Job (a kopf worker_limit of 64 with
    indices on every kind froze a restarted operator: kopf's indexing deadlock)."""
    n = 80
    _succeeded_dataset(cluster, namespace)
    apply(cluster, [_training_job(namespace, f"tj-{i:03d}") for i in range(n)])
    want = {f"tj-{i:03d}-sft-g1" for i in range(n)}
    with operator_factory(namespace) as runner:
        wait_for(f"{n} Jobs", lambda: want <= {j["metadata"]["name"] for j in items(cluster, namespace, "jobs")},
                 timeout=240, runner=runner)
        wait_for("JobCreated on every TrainingJob", lambda: all(
            cond(t, "JobCreated").get("status") == "True" for t in items(cluster, namespace, "trainingjobs")),
            timeout=120, runner=runner)
    assert {j["metadata"]["name"] for j in items(cluster, namespace, "jobs")} == want


def test_no_finalizers_deletion_needs_no_operator(cluster: Any, namespace: str, operator_factory: Any) -> None:
    """Objects the operator worked on carry no finalizer: with the operator stopped they (and so their
    namespace) delete at once. Timers used to add one to unsettled objects and to every ModelDeployment."""
    _succeeded_dataset(cluster, namespace)
    md = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "chat", "namespace": namespace}, "spec": {"model": {"uri": "hf://org/tiny"}}}
    with operator_factory(namespace) as runner:
        apply(cluster, [_training_job(namespace, "sft"), md])
        wait_for("both objects handled", lambda: all(
            cond(get(cluster, namespace, kind, name), "JobCreated").get("status") == "True"
            for kind, name in (("trainingjob", "sft"), ("modeldeployment", "chat"))), timeout=120, runner=runner)
        time.sleep(3)  # several ModelDeployment resync passes
        events = wait_for("an Event for the TrainingJob", lambda: [
            e for e in items(cluster, namespace, "events")
            if e["involvedObject"]["name"] == "sft" and e["reason"] == "JobCreated"], timeout=30, runner=runner)
    assert events[0]["source"]["component"] == "kubeforge-operator"
    assert events[0]["reportingComponent"] == "kubeforge-operator"
    for kind in ("trainingjob", "modeldeployment", "dataset"):
        for obj in items(cluster, namespace, kind):
            assert not obj["metadata"].get("finalizers"), (kind, obj["metadata"]["finalizers"])
    cluster.kubectl("delete", "trainingjobs,modeldeployments,datasets", "--all", "-n", namespace, "--timeout=30s")
    assert not items(cluster, namespace, "trainingjobs") and not items(cluster, namespace, "modeldeployments")


def test_dependency_cycle_reported(cluster: Any, namespace: str, operator_factory: Any) -> None:
    """A -> B -> A and a Dataset made from itself: InvalidSpec naming the cycle, and a message that stays put."""
    _succeeded_dataset(cluster, namespace)
    loop = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "loop", "namespace": namespace},
            "spec": {"task": "instruction", "source": {"fromDataset": {"name": "loop"}}}}
    a = _training_job(namespace, "a", {"ref": {"kind": "TrainingJob", "name": "b"}})
    b = _training_job(namespace, "b", {"ref": {"kind": "TrainingJob", "name": "a"}})
    with operator_factory(namespace) as runner:
        apply(cluster, [loop, a, b])
        ds = wait_for("Dataset loop InvalidSpec", lambda: (o := get(cluster, namespace, "dataset", "loop"))
                      and cond(o, "DependenciesReady").get("reason") == "InvalidSpec" and o, timeout=60, runner=runner)
        tj = wait_for("TrainingJob a InvalidSpec", lambda: (o := get(cluster, namespace, "trainingjob", "a"))
                      and cond(o, "DependenciesReady").get("reason") == "InvalidSpec" and o, timeout=60, runner=runner)
        time.sleep(3)
        again = get(cluster, namespace, "trainingjob", "a")
    assert cond(ds, "DependenciesReady")["message"] == "dependency cycle: Dataset/loop -> Dataset/loop"
    assert cond(ds, "Succeeded")["status"] == "False"
    cycle = "dependency cycle: TrainingJob/a -> TrainingJob/b -> TrainingJob/a"
    assert cond(tj, "DependenciesReady")["message"] == cycle
    assert again is not None and again["status"]["conditions"] == tj["status"]["conditions"]
    assert items(cluster, namespace, "jobs") == []
