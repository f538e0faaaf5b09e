"""Golden-file tests for the pure manifest builders (regenerate: KUBEFORGE_UPDATE_GOLDEN=1 pytest ...)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge import deepspeed
from kubeforge.api.v1alpha1 import KINDS, KubeResource, ModelDeployment, TrainingJob
from kubeforge.builders import (
    dataset,
    evaluation,
    modeldeployment,
    naming,
    rewardmodel,
    rlhfjob,
    trainingjob,
    workloads,
)
from kubeforge.manifests import load
from kubeforge.settings import OperatorSettings
from kubeforge.stage import CONFIG_FILE, ResolvedInput, StageConfig, dependencies, stage_command

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
PIPELINE = REPO / "examples" / "pipeline"
SETTINGS = OperatorSettings()
UPDATE = os.environ.get("KUBEFORGE_UPDATE_GOLDEN") == "1"

BUILDERS = {
    "Dataset": dataset.get_children,
    "TrainingJob": trainingjob.get_children,
    "RewardModel": rewardmodel.get_children,
    "RLHFJob": rlhfjob.get_children,
    "Evaluation": evaluation.get_children,
    "ModelDeployment": modeldeployment.get_conversion_children,
}


def _with_meta(resource: KubeResource, generation: int = 3) -> KubeResource:
    """The object as the API server would hand it to the operator (namespace, uid, generation)."""
    body = resource.to_wire()
    body["metadata"] = {
        **body["metadata"],
        "namespace": "ml",
        "uid": f"uid-{resource.kind.lower()}-{resource.name}",
        "generation": generation,
    }
    return KINDS[resource.kind].model_validate(body)


def _inputs(resource: KubeResource) -> dict[str, ResolvedInput]:
    """Every dependency resolved to a fixed artifact, the way the controllers resolve them."""
    out: dict[str, ResolvedInput] = {}
    for dep in dependencies(resource):
        if dep.key == "gate":
            continue
        uri = f"pvc://kubeforge-artifacts/{dep.namespace}/{dep.kind.lower()}/{dep.name}"
        out[dep.key] = ResolvedInput(kind=dep.kind, name=dep.name, uri=uri, digest=f"sha256:{dep.name}")
    return out


def _pipeline() -> dict[str, KubeResource]:
    return {r.name: _with_meta(r) for r in load([PIPELINE])}


def _check_golden(name: str, manifests: list[dict[str, Any]]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump_all(manifests, sort_keys=True, width=120)
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} missing: run with KUBEFORGE_UPDATE_GOLDEN=1 to create it, then review the diff")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} differs; if intended, rerun with KUBEFORGE_UPDATE_GOLDEN=1"


@pytest.mark.parametrize(
    "name", ["corpus", "instructions", "preferences", "base-lm", "chat-sft", "helpfulness-rm", "chat-grpo",
             "chat-grpo-eval", "chat"]
)
def test_stage_workload_golden(name: str) -> None:
    resource = _pipeline()[name]
    children = BUILDERS[resource.kind](resource, _inputs(resource), SETTINGS)  # type: ignore[operator]
    _check_golden(f"{resource.kind.lower()}-{name}", children)


def _md(**spec_overrides: Any) -> ModelDeployment:
    base = _pipeline()["chat"].to_wire()
    base["spec"].update(spec_overrides)
    for key in [k for k, v in spec_overrides.items() if v is None]:
        del base["spec"][key]
    return ModelDeployment.model_validate(base)


def test_modeldeployment_canary_with_hpa_golden() -> None:
    md = _md()
    children = modeldeployment.get_serving_children(
        md, SETTINGS, stable_version="g2", stable_repository="pvc://kubeforge-artifacts/ml/modeldeployment/chat",
        canary_version="g3", canary_repository="pvc://kubeforge-artifacts/ml/modeldeployment/chat",
    )
    kinds = [c["kind"] for c in children]
    assert kinds == ["Service", "Deployment", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    stable, canary = children[1], children[2]
    assert "replicas" not in stable["spec"], "the HPA owns the stable replica count"
    assert canary["spec"]["replicas"] == 1  # ceil(minReplicas 2 * 25 / 100)
    assert canary["metadata"]["name"] == "chat-canary"
    _check_golden("modeldeployment-chat-serving-canary-hpa", children)


def test_modeldeployment_canary_split_golden() -> None:
    md = _md(autoscaling=None, replicas=4, rollout={"strategy": "canary", "canaryWeight": 30})
    children = modeldeployment.get_serving_children(
        md, SETTINGS, stable_version="g1", stable_repository="s3://models/chat/g1",
        canary_version="g2", canary_repository="s3://models/chat/g2",
    )
    stable, canary = children[1], children[2]
    assert (stable["spec"]["replicas"], canary["spec"]["replicas"]) == (2, 2)  # ceil(4*0.3)=2
    svc = children[0]
    assert svc["spec"]["selector"].items() <= stable["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= canary["spec"]["template"]["metadata"]["labels"].items()
    assert canary["spec"]["template"]["spec"]["containers"][0]["args"][0] == "--model-repository=s3://models/chat/g2"
    _check_golden("modeldeployment-chat-serving-canary", children)


def test_modeldeployment_replace_golden() -> None:
    md = _md(autoscaling=None, replicas=3, rollout={"strategy": "replace"})
    children = modeldeployment.get_serving_children(
        md, SETTINGS, stable_version="g1", stable_repository="pvc://kubeforge-artifacts/ml/modeldeployment/chat"
    )
    assert [c["kind"] for c in children] == ["Service", "Deployment", "PodDisruptionBudget"]
    deploy = children[1]["spec"]["template"]["spec"]["containers"][0]
    assert deploy["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert deploy["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert [p["containerPort"] for p in deploy["ports"]] == [8000, 8001, 8002]
    assert "--model-repository=/mnt/pvc/kubeforge-artifacts/ml/modeldeployment/chat" in deploy["args"]
    _check_golden("modeldeployment-chat-serving-replace", children)


@pytest.mark.parametrize(("spec", "pdb"), [
    ({"autoscaling": None, "replicas": 1}, False),
    ({"autoscaling": None, "replicas": 2}, True),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 1}}, False),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}, True),
])
def test_pdb_only_when_triton_can_have_more_than_one_pod(spec: dict[str, Any], pdb: bool) -> None:
    md = _with_meta(_md(**spec))
    children = modeldeployment.get_serving_children(md, SETTINGS, stable_version="g1", stable_repository="s3://m/c")
    budgets = [c for c in children if c["kind"] == "PodDisruptionBudget"]
    assert bool(budgets) is pdb and (modeldeployment.get_pdb(md) is not None) is pdb
    if pdb:
        (budget,) = budgets
        assert budget["apiVersion"] == "policy/v1" and budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"] == children[0]["spec"]["selector"]  # both tracks
        assert budget["metadata"]["ownerReferences"][0]["uid"] == "uid-modeldeployment-chat"


def test_pods_request_and_bound_ephemeral_storage() -> None:
    """Every container requests and limits ephemeral-storage; every disk-backed emptyDir has a sizeLimit."""
    pipeline = _pipeline()
    tj = pipeline["chat-sft"].to_wire()
    tj["spec"]["resources"] = {**tj["spec"].get("resources", {}), "gpu": 1, "ephemeralStorage": "50Gi"}
    sft = _with_meta(TrainingJob.model_validate(tj))
    md = _with_meta(_md())
    pods = [
        c["spec"]["template"]["spec"]
        for children in (
            *(BUILDERS[r.kind](r, _inputs(r), SETTINGS) for r in pipeline.values()),  # type: ignore[operator]
            trainingjob.get_children(sft, _inputs(sft), SETTINGS),  # type: ignore[arg-type]
            modeldeployment.get_serving_children(md, SETTINGS, stable_version="g1", stable_repository="s3://m/c"),
        )
        for c in children if c["kind"] in ("Job", "Deployment")
    ]
    assert len(pods) == 11
    for pod in pods:
        (container,) = pod["containers"]
        size = container["resources"]["requests"]["ephemeral-storage"]
        assert container["resources"]["limits"]["ephemeral-storage"] == size
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tmp"]["emptyDir"] == {"sizeLimit": size}
        for v in volumes.values():
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), v
    assert {p["containers"][0]["resources"]["requests"]["ephemeral-storage"] for p in pods} == {"20Gi", "50Gi"}


@pytest.mark.parametrize(("total", "weight", "expected"), [(2, 25, (1, 1)), (10, 20, (8, 2)), (1, 20, (1, 1)),
                                                           (4, 99, (1, 4))])
def test_split_replicas(total: int, weight: int, expected: tuple[int, int]) -> None:
    assert modeldeployment.split_replicas(total, weight) == expected


def test_multinode_deepspeed_job() -> None:
    tj = _pipeline()["base-lm"]
    assert isinstance(tj, TrainingJob)
    svc, job = trainingjob.get_children(tj, _inputs(tj), SETTINGS)
    assert job["metadata"]["name"] == "base-lm-pretrain-g3"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert svc["spec"]["clusterIP"] == "None"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    container = pod["containers"][0]
    config = StageConfig.model_validate_json(workloads.stage_file(job, CONFIG_FILE))
    assert container["command"] == [
        "torchrun", "--nnodes", "2", "--nproc-per-node", "8", "--node-rank", "$(NODE_RANK)",
        "--master-addr", "base-lm-pretrain-g3-0.base-lm-pretrain-g3", "--master-port", "29500",
        *stage_command(config)[1:],
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["WORLD_SIZE"]["value"] == "16"
    assert env["MASTER_ADDR"]["value"] == "base-lm-pretrain-g3-0.base-lm-pretrain-g3"
    assert "valueFrom" in env["NODE_RANK"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    ds = json.loads(workloads.stage_file(job, "deepspeed.json"))
    assert {"name": "KUBEFORGE_DEEPSPEED_CONFIG", "value": "/etc/kubeforge/deepspeed.json"} in container["env"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is True
    assert ds == deepspeed.get_deepspeed_config(tj.spec)


def test_deepspeed_config_offload_stage3() -> None:
    tj = _pipeline()["base-lm"].to_wire()
    tj["spec"]["distributed"] = {"strategy": "deepspeed", "zeroStage": 3, "offloadOptimizer": True,
                                 "offloadParams": True}
    tj["spec"]["precision"] = "fp16"
    cfg = deepspeed.get_deepspeed_config(TrainingJob.model_validate(tj).spec)
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert cfg["fp16"]["enabled"] is True and cfg["bf16"]["enabled"] is False


def test_pod_carries_the_shared_stage_config() -> None:
    """The Job's pods mount exactly what the local runner would write (same renderer), from their own
    annotations through a downwardAPI volume: no ConfigMap to create."""
    tj = _pipeline()["chat-sft"]
    inputs = _inputs(tj)
    (job,) = trainingjob.get_children(tj, inputs, SETTINGS)
    expected = trainingjob.get_stage_config(tj, inputs, SETTINGS)
    assert workloads.stage_file(job, CONFIG_FILE) == expected.dump()
    pod = job["spec"]["template"]["spec"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["downwardAPI"]["items"] == [{"path": CONFIG_FILE, "fieldRef": {
        "fieldPath": f"metadata.annotations['{naming.STAGE_FILE_ANNOTATION_PREFIX}{CONFIG_FILE}']"}}]
    assert {"name": "config", "mountPath": "/etc/kubeforge", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == stage_command(expected)
    assert job["metadata"]["annotations"][naming.CONFIG_DIGEST_ANNOTATION] == expected.digest()
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-trainingjob-chat-sft"


def test_pod_annotations_and_overrides() -> None:
    body = _pipeline()["chat-sft"].to_wire()
    body["metadata"]["annotations"] = {naming.POD_ANNOTATIONS_ANNOTATION: '{"example.com/trace": "on"}'}
    body["spec"]["resources"]["podOverrides"] = {
        "env": [{"name": "EXTRA", "value": "1"}],
        "annotations": {"example.com/team": "nlp"},
        "labels": {"team": "nlp"},
    }
    tj = TrainingJob.model_validate(body)
    job = trainingjob.get_children(tj, _inputs(tj), SETTINGS)[-1]
    tmpl = job["spec"]["template"]
    assert tmpl["metadata"]["annotations"]["example.com/trace"] == "on"
    assert tmpl["metadata"]["annotations"]["example.com/team"] == "nlp"
    assert tmpl["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    assert tmpl["metadata"]["labels"]["team"] == "nlp"
    envs = [e["name"] for e in tmpl["spec"]["containers"][0]["env"]]
    assert "EXTRA" in envs and "PYTHONUNBUFFERED" in envs

    # Reserved keys (e.g. KWOK's kubeforge.io/test-fail) only with the operator's test hooks on.
    body["metadata"]["annotations"] = {naming.POD_ANNOTATIONS_ANNOTATION: '{"kubeforge.io/test-fail": "true"}'}
    tj = TrainingJob.model_validate(body)
    with pytest.raises(ValueError, match=r"kubeforge\.io/pod-annotations.*reserved: kubeforge\.io/test-fail"):
        trainingjob.get_children(tj, _inputs(tj), SETTINGS)
    job = trainingjob.get_children(tj, _inputs(tj), OperatorSettings(test_hooks=True))[-1]
    assert job["spec"]["template"]["metadata"]["annotations"]["kubeforge.io/test-fail"] == "true"

    body["metadata"]["annotations"] = {naming.POD_ANNOTATIONS_ANNOTATION: "[1]"}
    with pytest.raises(ValueError, match=r"kubeforge\.io/pod-annotations"):
        trainingjob.get_children(TrainingJob.model_validate(body), {}, SETTINGS)


def test_child_name_is_deterministic_and_bounded() -> None:
    tj = _pipeline()["chat-sft"].to_wire()
    tj["metadata"]["name"] = "a" * 63
    res = TrainingJob.model_validate(tj)
    n1, n2 = naming.child_name(res, "sft"), naming.child_name(res, "sft")
    assert n1 == n2 and len(n1) <= naming.MAX_CHILD_NAME and n1.endswith("-g3")
    assert naming.child_name(res, "sft", 4) != n1


def test_storage_mounts_store_and_input_claims() -> None:
    ds = _pipeline()["corpus"]
    job = dataset.get_children(ds, {}, SETTINGS)[-1]
    spec = job["spec"]["template"]["spec"]
    claims = sorted(v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v)
    assert claims == ["corpus", "kubeforge-artifacts"]
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/mnt/pvc/corpus", "/mnt/pvc/kubeforge-artifacts", "/etc/kubeforge"} <= mounts
    # A plain-path store root (the chart's default) mounts the artifact PVC at that path.
    path_settings = OperatorSettings(store_root="/var/lib/kubeforge/store")
    job = dataset.get_children(ds, {}, path_settings)[-1]
    mounts = {m["mountPath"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/var/lib/kubeforge/store" in mounts


def test_s3_credentials_from_secret() -> None:
    ds = _pipeline()["preferences"]
    job = dataset.get_children(ds, {}, SETTINGS)[-1]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials",
                                                                    "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"


def test_settings_from_env() -> None:
    s = OperatorSettings.from_env({"KUBEFORGE_TRAINER_IMAGE": "t:1", "KUBEFORGE_METRICS_PORT": "9999",
                                   "KUBEFORGE_WATCH_NAMESPACES": "a, b", "KUBEFORGE_TEST_HOOKS": "true"})
    assert (s.trainer_image, s.metrics_port, s.namespaces, s.test_hooks) == ("t:1", 9999, ("a", "b"), True)
    assert OperatorSettings.from_env({}).store_root == "pvc://kubeforge-artifacts"


# --- Pod Security "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/) ---
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of the restricted profile that a pod spec can fail statically."""
    out = []
    psc = pod.get("securityContext", {})
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {vol['name']} uses {kinds - ALLOWED_VOLUMES}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(key)
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


def _all_pod_specs() -> list[tuple[str, dict[str, Any]]]:
    pods = []
    for res in _pipeline().values():
        for child in BUILDERS[res.kind](res, _inputs(res), SETTINGS):  # type: ignore[operator]
            if child["kind"] == "Job":
                pods.append((child["metadata"]["name"], child["spec"]["template"]["spec"]))
    md = _md()
    for child in modeldeployment.get_serving_children(
        md, SETTINGS, stable_version="g1", stable_repository="pvc://x/y", canary_version="g2",
        canary_repository="pvc://x/z",
    ):
        if child["kind"] == "Deployment":
            pods.append((child["metadata"]["name"], child["spec"]["template"]["spec"]))
    return pods


def test_every_pod_spec_passes_restricted_profile() -> None:
    pods = _all_pod_specs()
    assert len(pods) == 11
    for name, pod in pods:
        assert restricted_violations(pod) == [], name


def test_restricted_checker_catches_violations() -> None:
    _, pod = _all_pod_specs()[0]
    pod = json.loads(json.dumps(pod))
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 2


def test_a_config_too_large_for_pod_annotations_is_refused_naming_the_field() -> None:
    """Eight prompt variants with the longest system, header and user texts the schema allows (480 KB) pass
    the API server, but a pod's annotations hold 256 KiB in all: the builder refuses (the object's
    InvalidSpec, naming the field) instead of sending a Job the API server would refuse."""
    ev = load([REPO / "examples" / "benchmarks" / "03-evaluations.yaml"])[0]
    wire = ev.to_wire()
    long = "x" * 20000
    wire["spec"]["prompts"] = [{"name": f"v{i}", "system": long, "header": long, "user": long[:-10] + "{question}"}
                               for i in range(8)]
    wire["spec"].pop("thresholds", None)
    big = _with_meta(KINDS["Evaluation"].model_validate(wire))
    with pytest.raises(ValueError, match=r"spec\.prompts takes 4\d\d KiB") as err:
        evaluation.get_children(big, _inputs(big), SETTINGS)  # type: ignore[arg-type]
    assert "256 KiB" in str(err.value)
    wire["spec"]["prompts"] = wire["spec"]["prompts"][:2]  # 120 KB: fits
    (job,) = evaluation.get_children(_with_meta(KINDS["Evaluation"].model_validate(wire)), _inputs(big), SETTINGS)
    assert len(workloads.stage_file(job).encode()) < workloads.STAGE_FILES_BUDGET
