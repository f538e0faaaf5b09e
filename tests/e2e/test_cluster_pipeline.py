"""The quickstart on Kubernetes for real: the Helm chart installs the operator image as a pod on the real node
(kubelet + containerd, hack/real-node.sh), and every stage runs in its own pod from the images
hack/build-images.sh built. Nothing is faked: metrics in status are what the pods computed, Triton serves the
converted model, and a request through the Service (kubectl port-forward) answers.

The manifests are examples/quickstart/ with a storage-only overlay: the Datasets read their files from the
artifact PVC instead of paths next to the manifests. The operator pod is deleted once mid-pipeline; the
pipeline must still finish with exactly one Job per object.

Figures (time per stage pod, wall time) are written to ~/.cache/kubeforge/tools/logs/e2e-cluster-*.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
CHART = ROOT / "charts" / "kubeforge"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubeforge"
TOOLS_DIR = Path(os.environ.get("KUBEFORGE_TOOLS_DIR") or CACHE / "tools")
NODE = os.environ.get("KUBEFORGE_REAL_NODE", "kubeforge-node-0")
NODE_RUN = TOOLS_DIR / "node" / "run"
IMAGES_ENV = NODE_RUN / "images.env"  # written by hack/real-node.sh: references in the node's registry
VOLUMES = NODE_RUN / "volumes"
DATA_DIR = "quickstart-data"
PIPELINE_TIMEOUT_S = 40 * 60
BOUNDED = [("dataset", "corpus"), ("dataset", "instructions"), ("dataset", "questions"), ("dataset", "preferences"),
           ("trainingjob", "base-lm"), ("trainingjob", "chat-sft"), ("rewardmodel", "helpfulness-rm"),
           ("rlhfjob", "chat-grpo"), ("evaluation", "chat-eval")]


def images() -> dict[str, str]:
    """Image references the real node pulls (hack/test-cluster.sh up builds, pushes and pre-pulls them)."""
    if not IMAGES_ENV.is_file():
        pytest.fail(f"{IMAGES_ENV} missing: hack/test-cluster.sh up starts the real node", pytrace=False)
    pairs = (line.split("=", 1) for line in IMAGES_ENV.read_text().splitlines() if "=" in line)
    return {k.removeprefix("KUBEFORGE_IMAGE_").lower(): v for k, v in pairs}


def real_namespace(cluster: Any, prefix: str) -> str:
    """A `restricted` namespace whose pods go to the real node: PodNodeSelector and PodTolerationRestriction
    (enabled on the test API server) add the node selector and the taint's toleration to every pod."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    tolerations = [{"key": "kubeforge.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/part-of": "kubeforge-tests",
                       "pod-security.kubernetes.io/enforce": "restricted"},
            "annotations": {"scheduler.alpha.kubernetes.io/node-selector": "kubeforge.io/real-node=true",
                            "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(tolerations)},
        },
    }))
    wait_for(f"{name}: default ServiceAccount", lambda: cluster.kubectl(
        "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, timeout=60)
    return name


def wait_for(what: str, check: Callable[[], Any], timeout: float, on_timeout: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        out = check()
        if out:
            return out
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}", pytrace=False)
        time.sleep(2)


def get(cluster: Any, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def items(cluster: Any, ns: str, kind: str, *selector: str) -> list[dict[str, Any]]:
    proc = cluster.kubectl("get", kind, "-n", ns, *selector, "-o", "json")
    out: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
    return out


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in (obj or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def cluster_state(cluster: Any, *namespaces: str) -> str:
    """What to print when something times out: objects, Jobs, pods (with node and reason), recent events."""
    out = []
    for ns in namespaces:
        for args in (("get", "kubeforge", "-o", "wide"), ("get", "jobs,pods", "-o", "wide"),
                     ("get", "events", "--sort-by=.lastTimestamp")):
            proc = cluster.kubectl(*args, "-n", ns, check=False)
            out.append(f"$ kubectl {' '.join(args)} -n {ns}\n{proc.stdout[-3000:]}{proc.stderr[-500:]}")
    return "\n".join(out)


def storage(cluster: Any, ns: str) -> Path:
    """The artifact PVC on a PersistentVolume on the node (StorageClass kubeforge-node-local), with the
    quickstart's data files copied in."""
    path = VOLUMES / ns
    (path / DATA_DIR).mkdir(parents=True, exist_ok=True)
    path.chmod(0o1777)  # stage pods run as uid 1000; a hostPath volume gets no fsGroup
    for f in (QUICKSTART / "data").glob("*.jsonl"):
        shutil.copyfile(f, path / DATA_DIR / f.name)
    cluster.kubectl("apply", "-f", "-", input=f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {ns}-artifacts, labels: {{app.kubernetes.io/part-of: kubeforge-tests}}}}
spec:
  capacity: {{storage: 20Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: kubeforge-node-local
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{path: {path}, type: Directory}}
  claimRef: {{namespace: {ns}, name: kubeforge-artifacts}}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{NODE}]}}]}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: kubeforge-artifacts, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: kubeforge-node-local
  resources: {{requests: {{storage: 20Gi}}}}
""")
    return path


def quickstart_docs() -> list[dict[str, Any]]:
    """examples/quickstart/*.yaml with the storage overlay: Dataset files come from the artifact PVC."""
    docs: list[dict[str, Any]] = []
    for f in sorted(QUICKSTART.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc:
                continue
            if doc["kind"] == "Dataset":
                src = doc["spec"]["source"]
                src["uris"] = [f"pvc://kubeforge-artifacts/{DATA_DIR}/{Path(u).name}" for u in src["uris"]]
            docs.append(doc)
    return docs


def helm(cluster: Any, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run([str(cluster.bin_dir / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def installed(cluster: Any, crds: list[str]) -> Iterator[tuple[str, str, str]]:
    """(operator namespace, release, workload namespace): the chart installed with the built images, the
    operator watching the workload namespace only, its pod Running on the real node."""
    img = images()
    system = real_namespace(cluster, "kf-system")
    ns = real_namespace(cluster, "kf-e2e")
    release = "kf"
    repo, _, tag = img["operator"].rpartition(":")
    try:
        helm(cluster, "install", release, str(CHART), "-n", system, "--wait", "--timeout", "600s",
             "--set", "crds.enabled=false", "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
             "--set", f"workloadImages.trainer={img['trainer']}", "--set", f"workloadImages.serving={img['serving']}",
             "--set", f"workloadImages.triton={img['triton']}", "--set", f"watchNamespaces={{{ns}}}",
             "--set", "operator.pollInterval=1")
        yield system, release, ns
    finally:
        if os.environ.get("KUBEFORGE_E2E_KEEP") != "1":
            subprocess.run([str(cluster.bin_dir / "helm"), "--kubeconfig", str(cluster.kubeconfig), "uninstall",
                            release, "-n", system, "--wait", "--timeout", "120s"], capture_output=True, check=False)
            for name in (ns, system):
                cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
            cluster.kubectl("delete", "pv", f"{ns}-artifacts", "--ignore-not-found", "--wait=false", check=False)


def operator_pod(cluster: Any, system: str) -> dict[str, Any] | None:
    pods = [p for p in items(cluster, system, "pods", "-l", "app.kubernetes.io/name=kubeforge")
            if not p["metadata"].get("deletionTimestamp")]
    return pods[0] if pods else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_seconds(pod: dict[str, Any]) -> float | None:
    """Seconds the stage container ran (its own start/finish times, from the kubelet)."""
    for st in pod.get("status", {}).get("containerStatuses", []) or []:
        term = (st.get("state") or {}).get("terminated")
        if term and term.get("startedAt") and term.get("finishedAt"):
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            started, finished = (datetime.strptime(term[k], fmt) for k in ("startedAt", "finishedAt"))
            return (finished - started).total_seconds()
    return None


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 15 * 60)
def test_quickstart_runs_in_pods_on_the_real_node(cluster: Any, installed: tuple[str, str, str]) -> None:
    system, _, ns = installed
    t0 = time.monotonic()
    state = lambda: cluster_state(cluster, ns, system)  # noqa: E731
    first = operator_pod(cluster, system)
    assert first is not None and first["spec"]["nodeName"] == NODE, "the operator pod runs on the real node"
    assert first["status"]["phase"] == "Running"
    pv_dir = storage(cluster, ns)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(quickstart_docs()))

    # Kill the operator once, while base-lm's pod trains.
    wait_for("TrainingJob base-lm's pod Running", lambda: any(
        p["status"].get("phase") == "Running"
        for p in items(cluster, ns, "pods", "-l", "app.kubernetes.io/instance=base-lm")
    ), timeout=PIPELINE_TIMEOUT_S / 2, on_timeout=state)
    # Live progress while it trains: the operator scrapes the pod's metrics endpoint (no API credentials
    # in the pod) into status.progress, with percent and ETA (printer columns Progress/ETA).
    live = wait_for("base-lm's live progress in status while it runs", lambda: (
        o := get(cluster, ns, "trainingjob", "base-lm")) and cond(o, "Succeeded").get("reason") == "Running"
        and (o["status"].get("progress") or {}).get("step", 0) > 0 and o, timeout=180, on_timeout=state)
    progress = live["status"]["progress"]
    assert 0 < progress["step"] <= progress["totalSteps"] and progress["percent"].endswith("%"), progress
    assert progress["etaSeconds"] >= 0 and progress["loss"] > 0, progress
    cluster.kubectl("delete", "pod", first["metadata"]["name"], "-n", system, "--wait=false")
    replaced = wait_for("a new operator pod Running", lambda: (p := operator_pod(cluster, system))
                        and p["metadata"]["uid"] != first["metadata"]["uid"]
                        and p["status"].get("phase") == "Running" and p, timeout=300, on_timeout=state)
    assert replaced["spec"]["nodeName"] == NODE

    md = wait_for("ModelDeployment chat Ready=True", lambda: (o := get(cluster, ns, "modeldeployment", "chat"))
                  and cond(o, "Ready").get("status") == "True" and o, timeout=PIPELINE_TIMEOUT_S, on_timeout=state)
    # The namespaced install may not list namespaces, and the operator does not try (kopf's namespace scan
    # is off for exact names): kopf would retry the refused LIST for about a minute before serving anything.
    log = cluster.kubectl("logs", "-n", system, replaced["metadata"]["name"], "-c", "operator", check=False).stdout
    assert "namespaces is forbidden" not in log and "Not enough permissions" not in log, log[-3000:]
    wall = time.monotonic() - t0

    # Every bounded object succeeded with what its pod computed; lineage digests are there.
    for kind, name in BOUNDED:
        obj = get(cluster, ns, kind, name)
        assert obj is not None and cond(obj, "Succeeded").get("status") == "True", (kind, name, obj and obj["status"])
        status = obj["status"]
        if kind == "evaluation":  # an Evaluation's output is its report, not an artifact
            assert status.get("reportUri"), status
        else:
            digest = (status.get("artifact") or {}).get("digest") or status.get("digest")
            assert digest, f"{kind}/{name}: no artifact digest in status {status}"
        if kind != "dataset":
            assert status.get("lineage"), f"{kind}/{name}: no lineage"
        for entry in status.get("lineage") or []:
            assert str(entry.get("digest", "")).startswith("sha256:"), f"{kind}/{name}: lineage without digest: {entry}"
    sft = get(cluster, ns, "trainingjob", "chat-sft")
    assert sft is not None and {e["name"] for e in sft["status"]["lineage"]} >= {"base-lm", "instructions"}
    ev = get(cluster, ns, "evaluation", "chat-eval")
    assert ev is not None and cond(ev, "Passed").get("status") == "True", ev and ev["status"]
    gate = {t["metric"]: t["min"] for t in ev["spec"]["thresholds"]}
    assert gate and all(ev["status"]["metrics"][m] >= low for m, low in gate.items()), (gate, ev["status"]["metrics"])
    # The pods really ran on the node: one Job per object, every pod on the real node, exit 0.
    jobs = items(cluster, ns, "jobs")
    owners = [(j["metadata"]["ownerReferences"][0]["kind"], j["metadata"]["ownerReferences"][0]["name"]) for j in jobs]
    assert len(owners) == len(set(owners)) == len(BOUNDED) + 1, f"duplicate or missing Jobs: {sorted(owners)}"
    pods = items(cluster, ns, "pods")
    placement = [(p["metadata"]["name"], p["spec"].get("nodeName")) for p in pods]
    assert pods and all(node == NODE for _, node in placement), placement
    stage_pods = [p for p in pods if p["status"].get("phase") == "Succeeded"]
    assert len(stage_pods) >= len(BOUNDED) + 1
    assert all(p["status"]["podIP"].startswith("10.244.0.") for p in pods if p["status"].get("podIP"))

    # Triton: the Deployment's pod is Ready on the node; a request through the Service answers what the same
    # repository answers on the local Triton the runner uses.
    dep = get(cluster, ns, "deployment", "chat")
    assert dep is not None and dep["status"].get("readyReplicas", 0) >= 1
    assert md["status"]["lineage"][0]["digest"].startswith("sha256:") and md["status"]["modelDigest"]
    answer = request_through_service(cluster, ns, md, pv_dir)

    report = {
        "wall_s": round(wall, 1),
        "operator_restarted": True,
        "stage_pod_seconds": {p["metadata"]["name"]: pod_seconds(p) for p in stage_pods},
        "metrics": {"chat-eval": ev["status"]["metrics"]},
        "answer": answer,
    }
    out = TOOLS_DIR / "logs" / f"e2e-cluster-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def request_through_service(cluster: Any, ns: str, md: dict[str, Any], pv_dir: Path) -> str:
    """Generate through `kubectl port-forward service/chat` and compare with the local Triton."""
    from kubeforge_serving.client import TritonLMClient
    from kubeforge_serving.triton import TritonServer

    repo_uri = md["status"]["modelRepository"]
    assert repo_uri.startswith("pvc://kubeforge-artifacts/"), repo_uri
    repo = pv_dir / repo_uri.removeprefix("pvc://kubeforge-artifacts/")
    assert repo.is_dir(), f"{repo} (from {repo_uri}) missing on the node's volume"
    name = str((md["status"].get("details") or {}).get("modelName") or "chat")
    prompt = md["metadata"]["annotations"]["kubeforge.io/smoke-prompt"]
    port = free_port()
    pf = subprocess.Popen([str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "port-forward",
                           "-n", ns, "service/chat", f"{port}:8001"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for("port-forward", lambda: pf.poll() is not None or _connects(port), timeout=60)
        assert pf.poll() is None, pf.stderr.read().decode() if pf.stderr else ""
        client = TritonLMClient.from_repository(repo, name, url=f"127.0.0.1:{port}", protocol="grpc")
        try:
            assert client.is_ready(name)
            remote = client.generate(prompt, max_new_tokens=12)
        finally:
            client.close()
    finally:
        pf.terminate()
        pf.wait(10)
    with TritonServer(repo, [name], log_path=pv_dir.parent / f"{ns}-local-triton.log") as local:
        lc = TritonLMClient.from_repository(repo, name, url=local.grpc_url, protocol="grpc")
        try:
            expected = lc.generate(prompt, max_new_tokens=12)
        finally:
            lc.close()
    assert remote.strip() and remote == expected, (remote, expected)
    return remote


def _connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
