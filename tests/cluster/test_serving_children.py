"""Optional serving children against the real test control plane: the HPA follows `spec.autoscaling` and the
PodDisruptionBudget follows the replica count, both ways (created when asked for, deleted when not).

KWOK runs no containers: the conversion Job completes on its own and, with the operator's test hooks, the
ModelDeployment goes on to serving with the default model repository.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_operator import apply, cond, get, wait_for

pytestmark = pytest.mark.cluster


def _patch_spec(cluster: Any, ns: str, patch: dict[str, Any]) -> None:
    cluster.kubectl("patch", "modeldeployment", "chat", "-n", ns, "--type=merge", "-p", json.dumps({"spec": patch}))


def test_hpa_and_pdb_follow_the_spec(cluster: Any, namespace: str, claims: list[str], operator_factory: Any) -> None:
    md = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "chat", "namespace": namespace},
          "spec": {"model": {"uri": "hf://org/tiny"}, "replicas": 2,
                   "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                   "resources": {"cpu": "100m", "memory": "128Mi", "ephemeralStorage": "1Gi"}}}
    with operator_factory(namespace) as runner:
        apply(cluster, [md])
        wait_for("HPA and PDB chat", lambda: get(cluster, namespace, "hpa", "chat")
                 and get(cluster, namespace, "pdb", "chat"), timeout=180, runner=runner)
        pdb = get(cluster, namespace, "pdb", "chat")
        assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
        owner = get(cluster, namespace, "modeldeployment", "chat")
        assert owner is not None
        assert pdb["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        deploy = get(cluster, namespace, "deployment", "chat")
        assert deploy is not None
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["requests"]["ephemeral-storage"] == "1Gi"

        # spec.autoscaling removed: the HPA goes, the operator sets the replica count, the PDB stays (2 pods).
        _patch_spec(cluster, namespace, {"autoscaling": None})
        wait_for("HPA chat deleted", lambda: get(cluster, namespace, "hpa", "chat") is None, timeout=60, runner=runner)
        wait_for("Deployment chat at 2 replicas", lambda: (d := get(cluster, namespace, "deployment", "chat"))
                 and d["spec"].get("replicas") == 2, timeout=60, runner=runner)
        assert get(cluster, namespace, "pdb", "chat") is not None

        # One replica: a budget would only block node drains, so it goes too.
        _patch_spec(cluster, namespace, {"replicas": 1})
        wait_for("PDB chat deleted", lambda: get(cluster, namespace, "pdb", "chat") is None, timeout=60, runner=runner)
        served = wait_for("ModelDeployment serving generation 3", lambda: (
            o := get(cluster, namespace, "modeldeployment", "chat")) and o["metadata"]["generation"] == 3
            and o["status"].get("servedVersion") == "g3" and cond(o, "Ready").get("status") == "True" and o,
            timeout=60, runner=runner)
    assert served["status"]["readyReplicas"] >= 1
    assert get(cluster, namespace, "hpa", "chat") is None
