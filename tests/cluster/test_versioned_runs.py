"""Every run writes its own folder, so lineage stays true after a spec change (real control plane, KWOK pods).

A Dataset re-runs (new generation): a TrainingJob that used it runs again as `<job>-r1` into a new folder,
one with `rerunOnInputChange: false` keeps its result and says so, and the ModelDeployment serving the
first converts and serves the new run; a canary reads its own repository while the stable track keeps
serving the previous one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_operator import apply, cond, get, items, wait_for

pytestmark = pytest.mark.cluster

API = "kubeforge.io/v1alpha1"
SMALL = {"cpu": "100m", "memory": "128Mi"}


def _training_job(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "TrainingJob", "metadata": {"name": name, "namespace": ns},
            "spec": {"method": "sft", "model": {"uri": "hf://org/tiny"}, "dataset": {"name": "corpus"},
                     "resources": SMALL, **spec}}


def _succeeded(cluster: Any, ns: str, kind: str, name: str, **extra: Any) -> Any:
    def check() -> Any:
        obj = get(cluster, ns, kind, name)
        ok = obj and cond(obj, "Succeeded").get("status") == "True" and cond(obj, "Succeeded").get(
            "observedGeneration") == obj["metadata"]["generation"]
        return obj if ok and all(obj["status"].get(k) == v for k, v in extra.items()) else None
    return check


def test_moved_input_reruns_into_a_new_folder(cluster: Any, namespace: str, claims: list[str],
                                              operator_factory: Any) -> None:
    ds = {"apiVersion": API, "kind": "Dataset", "metadata": {"name": "corpus", "namespace": namespace},
          "spec": {"task": "instruction", "source": {"uris": ["s3://raw/corpus.jsonl"]}}}
    md = {"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": "chat", "namespace": namespace},
          "spec": {"model": {"ref": {"kind": "TrainingJob", "name": "t"}}, "resources": SMALL}}
    with operator_factory(namespace) as runner:
        apply(cluster, [ds, _training_job(namespace, "t"), _training_job(namespace, "keep", rerunOnInputChange=False),
                        md])
        first = wait_for("t Succeeded", _succeeded(cluster, namespace, "trainingjob", "t"), runner=runner)
        wait_for("chat serving g1", lambda: (o := get(cluster, namespace, "modeldeployment", "chat"))
                 and o["status"].get("servedVersion") == "g1", timeout=180, runner=runner)
        wait_for("keep Succeeded", _succeeded(cluster, namespace, "trainingjob", "keep"), runner=runner)
        assert first["status"]["artifact"]["uri"].endswith(f"/{namespace}/trainingjob/t/g1")
        assert first["status"]["lineage"][0]["uri"].endswith("/dataset/corpus/g1")

        cluster.kubectl("patch", "dataset", "corpus", "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"split": {"seed": 8}}}))
        wait_for("Dataset corpus generation 2", _succeeded(cluster, namespace, "dataset", "corpus"), runner=runner)
        again = wait_for("t re-run", _succeeded(cluster, namespace, "trainingjob", "t", inputRevision=1),
                         runner=runner)
        keep = wait_for("keep reports the moved input", lambda: (o := get(cluster, namespace, "trainingjob", "keep"))
                        and cond(o, "DependenciesReady").get("reason") == "InputsChanged" and o, runner=runner)
        served = wait_for("chat serving the re-run model", lambda: (o := get(cluster, namespace, "modeldeployment",
                          "chat")) and o["status"].get("servedVersion") == "g1-r1" and o, timeout=180, runner=runner)
    assert "/modeldeployment/chat/g1-r1" in served["status"]["servedModelRepository"]
    assert served["status"]["lineage"][0]["uri"].endswith("/trainingjob/t/g1-r1")
    assert again["status"]["artifact"]["uri"].endswith(f"/{namespace}/trainingjob/t/g1-r1")
    assert again["status"]["lineage"][0]["uri"].endswith("/dataset/corpus/g2")
    assert again["status"]["jobName"] == "t-sft-g1-r1"
    assert cond(keep, "Succeeded")["status"] == "True"
    assert "kept (spec.rerunOnInputChange: false)" in cond(keep, "DependenciesReady")["message"]
    assert keep["status"]["lineage"][0]["uri"].endswith("/dataset/corpus/g1")
    jobs = {j["metadata"]["name"] for j in items(cluster, namespace, "jobs")}
    assert {"t-sft-g1", "t-sft-g1-r1", "keep-sft-g1"} <= jobs and "keep-sft-g1-r1" not in jobs


def test_canary_reads_its_own_repository(cluster: Any, namespace: str, claims: list[str],
                                         operator_factory: Any) -> None:
    md = {"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": "chat", "namespace": namespace},
          "spec": {"model": {"uri": "hf://org/tiny"}, "replicas": 2, "resources": SMALL,
                   "rollout": {"strategy": "canary", "canaryWeight": 50, "promoteAfterSeconds": 3600}}}

    def repository(deploy: dict[str, Any]) -> str:
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        return next(a for a in container["args"] if a.startswith("--model-repository=")).split("=", 1)[1]

    with operator_factory(namespace) as runner:
        apply(cluster, [md])
        wait_for("serving g1", lambda: (o := get(cluster, namespace, "modeldeployment", "chat"))
                 and o["status"].get("servedVersion") == "g1", timeout=180, runner=runner)
        cluster.kubectl("patch", "modeldeployment", "chat", "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"quantization": {"mode": "fp16"}}}))
        canary = wait_for("canary Deployment", lambda: get(cluster, namespace, "deployment", "chat-canary"),
                          timeout=180, runner=runner)
        stable = get(cluster, namespace, "deployment", "chat")
        status = get(cluster, namespace, "modeldeployment", "chat")
    assert stable is not None and status is not None
    assert "/chat/g1" in repository(stable), repository(stable)
    assert "/chat/g2" in repository(canary), repository(canary)
    assert status["status"]["canaryVersion"] == "g2" and status["status"]["servedVersion"] == "g1"
    assert status["status"]["servedModelRepository"] != status["status"]["modelRepository"]
