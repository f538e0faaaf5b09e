"""The Helm chart, rendered by the real helm binary (hack/build-tools.sh builds it).

Checks what a reviewer would check by hand: least-privilege RBAC (no wildcards, no Secrets), a
restricted pod, values wired into the operator's environment, CRD gating, and the schema rejecting
bad values with a message naming the field.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeforge"
KUBE_VERSION = "1.36.3"
TOOLS_BIN = Path(
    os.environ.get("KUBEFORGE_TOOLS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubeforge" / "tools"
) / "bin"

# Every (apiGroup, resource) the operator may touch. Anything else in a rendered rule fails the test.
ALLOWED_RESOURCES = {
    ("kubeforge.io", r) for kind in ("datasets", "trainingjobs", "rewardmodels", "rlhfjobs", "evaluations",
                                     "modeldeployments") for r in (kind, f"{kind}/status", f"{kind}/finalizers")
} | {
    ("batch", "jobs"), ("", "services"), ("", "pods"), ("", "events"),
    ("apps", "deployments"), ("autoscaling", "horizontalpodautoscalers"), ("policy", "poddisruptionbudgets"),
    ("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"),
}
READ_ONLY = {("", "pods"), ("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}


def helm_path() -> str:
    """The project's helm (v3, built from source); PATH as a fallback."""
    for candidate in (TOOLS_BIN / "helm", shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"helm not found in {TOOLS_BIN}: run hack/build-tools.sh", pytrace=False)
    pytest.skip(f"helm not built yet in {TOOLS_BIN}: run hack/build-tools.sh (helm is its first binary)")


Render = Callable[..., list[dict[str, Any]]]


def _set_args(values: dict[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in values.items():
        out += ["--set", f"{k}={v}"]
    return out


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_path()


@pytest.fixture(scope="module")
def render(helm: str) -> Render:
    """helm template → list of objects (hooks and tests included)."""

    def _render(values: dict[str, str] | None = None, namespace: str = "kf-system") -> list[dict[str, Any]]:
        proc = subprocess.run(
            [helm, "template", "kf", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION,
             *_set_args(values or {})],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return _render


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": "{team-a,team-b}"},
        {"metrics.serviceMonitor.enabled": "true", "prometheusRule.enabled": "true"},
        {"crds.enabled": "false", "dashboards.enabled": "false", "tests.enabled": "false"},
    ],
    ids=["defaults", "namespaced", "monitoring", "minimal"],
)
def test_lint_strict(helm: str, values: dict[str, str]) -> None:
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *_set_args(values)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_plain_helm_template_works(helm: str) -> None:
    """hack/build-tools.sh links helm with its version and a current Kubernetes version: without them helm
    assumes v1.20 and refuses the chart's kubeVersion (>=1.30) unless every call passes --kube-version."""
    import re

    script = (ROOT / "hack" / "build-tools.sh").read_text()
    helm_version = re.search(r'HELM_VERSION="\$\{HELM_VERSION:-(v[\d.]+)\}"', script)
    assert helm_version is not None
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith(helm_version.group(1)), version
    proc = subprocess.run([helm, "template", "kf", str(CHART)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_default_render_has_the_expected_objects(render: Render) -> None:
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("CustomResourceDefinition") == 6
    assert kinds.count("ConfigMap") == len(list((CHART / "dashboards").glob("*.json"))) == 4
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment", "Pod"):
        assert kind in kinds, f"{kind} missing from the default render"
    assert "Role" not in kinds and "RoleBinding" not in kinds
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert o["metadata"].get("namespace") == "kf-system", o["metadata"]["name"]


def test_deployment_is_single_replica_recreate_and_restricted(render: Render) -> None:
    dep = one(render(), "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(render(), "ServiceAccount")["metadata"]["name"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["command"] == ["kubeforge", "operator"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "ready": 8082}
    # Liveness (kopf: the event loop answers) and readiness (started, API server serves the Kubeforge group)
    # are different endpoints: an API server outage makes the pod NotReady, it does not restart it.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}
    assert "--liveness=http://0.0.0.0:8081/healthz" in c["args"]
    assert "--readiness=http://0.0.0.0:8082/readyz" in c["args"]
    assert "--standalone" in c["args"] and "--all-namespaces" in c["args"]


def test_values_reach_the_operator_environment(render: Render) -> None:
    objs = render({
        "workloadImages.trainer": "reg.local/trainer:9",
        "workloadImages.serving": "reg.local/serving:9",
        "workloadImages.triton": "reg.local/triton:9",
        "artifactStore.pvc": "models",
        "artifactStore.root": "s3://bucket/kf",
        "metrics.port": "9999",
        "image.repository": "reg.local/op",
        "image.tag": "dev",
    })
    dep = one(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KUBEFORGE_TRAINER_IMAGE"] == "reg.local/trainer:9"
    assert env["KUBEFORGE_SERVING_IMAGE"] == "reg.local/serving:9"
    assert env["KUBEFORGE_TRITON_IMAGE"] == "reg.local/triton:9"
    assert env["KUBEFORGE_ARTIFACT_PVC"] == "models"
    assert env["KUBEFORGE_STORE_ROOT"] == "s3://bucket/kf"
    assert env["KUBEFORGE_METRICS_PORT"] == "9999"
    assert env["KUBEFORGE_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert env["KUBEFORGE_WATCH_NAMESPACES"] == ""
    assert "KUBEFORGE_TEST_HOOKS" not in env, "test hooks must never be on in a real install"
    assert c["image"] == "reg.local/op:dev"
    svc = one(objs, "Service")
    assert svc["spec"]["ports"][0]["port"] == 9999 and svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_workload_pod_defaults_reach_the_operator(render: Render) -> None:
    """`workloadPodDefaults` becomes KUBEFORGE_WORKLOAD_POD_DEFAULTS, which the operator's settings parse."""
    from kubeforge.settings import OperatorSettings

    def settings_from(objs: list[dict[str, Any]]) -> OperatorSettings:
        (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
        return OperatorSettings.from_env({e["name"]: e["value"] for e in c["env"] if "value" in e})

    assert settings_from(render()).workload_pod_defaults == OperatorSettings().workload_pod_defaults
    defaults = settings_from(render({
        "workloadPodDefaults.nodeSelector.pool": "ml",
        "workloadPodDefaults.tolerations[0].key": "dedicated",
        "workloadPodDefaults.tolerations[0].operator": "Exists",
        "workloadPodDefaults.annotations.example\\.com/team": "ml",
    })).workload_pod_defaults
    assert defaults.node_selector == {"pool": "ml"}
    assert [t.to_wire() for t in defaults.tolerations] == [{"key": "dedicated", "operator": "Exists"}]
    assert defaults.annotations == {"example.com/team": "ml"}


def _rules(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for o in by_kind(objs, kind) for r in o["rules"]]


def _assert_least_privilege(rules: list[dict[str, Any]]) -> None:
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert (group, res) in ALLOWED_RESOURCES, f"unexpected permission on {group or 'core'}/{res}"
                if (group, res) in READ_ONLY:
                    assert set(rule["verbs"]) <= {"get", "list", "watch"}, f"{res} must be read-only: {rule}"
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule


def test_cluster_wide_rbac_is_least_privilege(render: Render) -> None:
    objs = render()
    rules = _rules(objs, "ClusterRole")
    _assert_least_privilege(rules)
    flat = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert not any(r == "secrets" for _, r in flat), "the operator never reads Secrets"
    # What the controllers need.
    assert {"create", "delete", "list", "get", "watch"} <= flat[("batch", "jobs")]
    assert {"patch"} <= flat[("kubeforge.io", "trainingjobs/status")]
    assert {"create"} <= flat[("", "events")]
    assert {"create", "patch", "delete"} <= flat[("apps", "deployments")]
    assert {"list", "watch"} <= flat[("", "namespaces")]
    assert {"list", "watch"} <= flat[("apiextensions.k8s.io", "customresourcedefinitions")]
    binding = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "kf-system"}]


def test_namespaced_rbac_has_roles_per_namespace_and_no_cluster_writes(render: Render) -> None:
    objs = render({"watchNamespaces": "{team-a,team-b}"})
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == "kf-system"
    _assert_least_privilege(_rules(objs, "Role"))
    cluster_rules = _rules(objs, "ClusterRole")
    _assert_least_privilege(cluster_rules)
    # Only read access to CRDs stays cluster-wide: no namespaces, no jobs anywhere else.
    assert cluster_rules == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                              "verbs": ["get", "list", "watch"]}]
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    assert "--all-namespaces" not in c["args"]


def test_probe_endpoints_follow_the_values(render: Render) -> None:
    dep = one(render({"health.readiness.port": "9090", "health.readiness.path": "/ready"}), "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert {"name": "ready", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ready"}
    assert "--readiness=http://0.0.0.0:9090/ready" in c["args"]
    assert c["livenessProbe"]["httpGet"] != c["readinessProbe"]["httpGet"]


@pytest.mark.parametrize(("values", "present", "keep"), [
    ({}, True, True),
    ({"crds.keep": "false"}, True, False),
    ({"crds.enabled": "false"}, False, False),
])
def test_crd_gating(render: Render, values: dict[str, str], present: bool, keep: bool) -> None:
    crds = by_kind(render(values), "CustomResourceDefinition")
    assert bool(crds) is present
    for crd in crds:
        policy = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy")
        assert (policy == "keep") is keep, crd["metadata"]
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeforge"


def test_monitoring_objects_only_when_enabled(render: Render) -> None:
    objs = render({"metrics.serviceMonitor.enabled": "true", "prometheusRule.enabled": "true",
                   "prometheusRule.stuckAfter": "2h"})
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    one(objs, "PodMonitor")
    rule = one(objs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"KubeforgeOperatorDown", "KubeforgeReconcileErrors", "KubeforgeResourceStuck",
            "KubeforgeWorkloadFailed", "KubeforgeTrainingStalled"} <= set(alerts)
    assert alerts["KubeforgeResourceStuck"]["for"] == "2h"
    assert f'job="{svc["metadata"]["name"]}"' in alerts["KubeforgeOperatorDown"]["expr"]


def test_dashboards_are_configmaps_for_the_grafana_sidecar(render: Render) -> None:
    cms = by_kind(render(), "ConfigMap")
    files = {p.name: p for p in (CHART / "dashboards").glob("*.json")}
    assert {k for cm in cms for k in cm["data"]} == set(files)
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads(files[key].read_text())


def test_helm_test_pod_checks_the_metrics_service(render: Render) -> None:
    pod = one(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    svc = one(render(), "Service")["metadata"]["name"]
    assert f"http://{svc}.kf-system.svc:8080/metrics" in script
    assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(("values", "field"), [
    ({"metrics.port": "0"}, "/metrics/port"),
    ({"watchNamespaces": "{Not_A_Namespace}"}, "/watchNamespaces/0"),
    ({"operator.logLevel": "loud"}, "/operator/logLevel"),
    ({"typoKey": "1"}, "typoKey"),
    ({"prometheusRule.stuckAfter": "six hours"}, "/prometheusRule/stuckAfter"),
    ({"workloadPodDefaults.securityContext.runAsUser": "0"}, "/workloadPodDefaults"),
    ({"workloadPodDefaults.tolerations[0].operator": "Maybe"}, "/workloadPodDefaults/tolerations/0/operator"),
    ({"health.readiness.path": "readyz"}, "/health/readiness/path"),
])
def test_schema_rejects_bad_values(helm: str, values: dict[str, str], field: str) -> None:
    proc = subprocess.run([helm, "template", "kf", str(CHART), "--kube-version", KUBE_VERSION, *_set_args(values)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert field in proc.stderr, proc.stderr


def test_rendered_crds_equal_the_generated_ones(render: Render) -> None:
    """Helm's fromYaml/toYaml round trip must not change a CRD beyond the labels/annotation it adds."""
    rendered = {c["metadata"]["name"]: c for c in by_kind(render(), "CustomResourceDefinition")}
    generated = {p.name.removesuffix(".yaml"): yaml.safe_load(p.read_text()) for p in (ROOT / "crds").glob("*.yaml")}
    assert set(rendered) == set(generated)
    for name, crd in rendered.items():
        meta = crd["metadata"]
        meta.pop("annotations")
        meta["labels"] = {k: v for k, v in meta["labels"].items() if k == "app.kubernetes.io/part-of"}
        assert crd == generated[name], f"{name}: rendered CRD differs from crds/{name}.yaml"


# Kind → (apiGroup, plural) for the children the operator touches.
RESOURCE_OF = {
    "Job": ("batch", "jobs"), "Pod": ("", "pods"), "ConfigMap": ("", "configmaps"), "Service": ("", "services"),
    "Deployment": ("apps", "deployments"), "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"), "Namespace": ("", "namespaces"),
}


def operator_api_calls() -> set[tuple[str, str, str]]:
    """(verb, apiGroup, plural) of every Kubernetes call in the controllers, read from their source.

    kube.get/list_objects/delete name their kind literally; kube.create/apply send builder output, whose kinds
    are the literal `"kind": "X"` of operator/kubeforge/builders. Server-side apply needs create and patch.
    """
    import re

    controllers = "\n".join(p.read_text() for p in (ROOT / "operator/kubeforge/controllers").glob("*.py"))
    builders = "\n".join(p.read_text() for p in (ROOT / "operator/kubeforge/builders").glob("*.py"))
    calls: set[tuple[str, str, str]] = set()
    verb_of = {"get": "get", "list_objects": "list", "delete": "delete"}
    for fn, kind in re.findall(r'kube\.(get|list_objects|delete)\(\s*"[^"]+",\s*"(\w+)"', controllers):
        calls.add((verb_of[fn], *RESOURCE_OF[kind]))
    child_kinds = set(re.findall(r'"kind": "(\w+)"', builders)) & set(RESOURCE_OF)
    assert {"Job", "Deployment"} <= child_kinds and "ConfigMap" not in child_kinds, child_kinds
    if "kube.create(" in controllers:
        calls |= {("create", *RESOURCE_OF[k]) for k in child_kinds}
    if "kube.apply(" in controllers:
        # Only the serving children are applied (controllers/modeldeployment.py).
        md = (ROOT / "operator/kubeforge/builders/modeldeployment.py").read_text()
        for k in set(re.findall(r'"kind": "(\w+)"', md)) & set(RESOURCE_OF):
            calls |= {("create", *RESOURCE_OF[k]), ("patch", *RESOURCE_OF[k])}
    return calls


def test_rbac_covers_every_call_the_operator_makes(render: Render) -> None:
    """Fails when a controller starts using a verb/resource the chart does not grant."""
    calls = operator_api_calls()
    assert ("list", "", "pods") in calls and ("delete", "batch", "jobs") in calls  # the scan works
    # Optional serving children are pruned when the spec stops asking for them.
    assert {("delete", "autoscaling", "horizontalpodautoscalers"), ("create", "policy", "poddisruptionbudgets"),
            ("delete", "policy", "poddisruptionbudgets")} <= calls
    assert ("get", "", "namespaces") in calls  # cross-namespace grants
    for objs, namespaced in ((render(), False), (render({"watchNamespaces": "{team-a}"}), True)):
        rules = _rules(objs, "ClusterRole") + _rules(objs, "Role")
        granted = {(v, g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
                   for v in rule["verbs"]}
        # Namespaced installs may not read Namespaces: the operator then refuses cross-namespace references.
        missing = sorted(calls - granted - ({("get", "", "namespaces")} if namespaced else set()))
        assert not missing, f"chart RBAC lacks {missing}: add them to charts/kubeforge/templates/rbac.yaml"
