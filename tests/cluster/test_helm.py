"""The Helm chart against the real test control plane: install, RBAC as the operator sees it, upgrade, uninstall.

KWOK runs no containers, so the operator image never starts; what is real is everything the API server
decides: Pod Security admission of the operator pod (the namespace enforces `restricted`), RBAC answers
for the chart's ServiceAccount (SubjectAccessReview), CRD ownership and Helm's keep policy.

The CRDs are cluster-wide and shared with other tests: when they already exist they are handed to this
release (Helm's adoption labels), and the release always keeps them (crds.keep=true is asserted before
any uninstall), so other tests never lose their CRDs.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeforge"
Cluster = Any  # tests/conftest.py:Cluster
CRD_NAMES = sorted(p.name.removesuffix(".yaml") for p in (REPO / "crds").glob("*.yaml"))


@dataclass
class Release:
    """One installed release of the chart."""

    cluster: Cluster
    name: str
    namespace: str
    install_output: str

    @property
    def fullname(self) -> str:
        return f"{self.name}-kubeforge"

    @cached_property
    def authz(self) -> Any:
        from kubernetes import client

        return client.AuthorizationV1Api(self.cluster.api_client())

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def helm(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return helm(self.cluster, *args, "-n", self.namespace, check=check, timeout=timeout)

    def allowed(self, verb: str, resource: str, group: str = "", namespace: str | None = None,
                subresource: str = "") -> bool:
        """Ask the API server (SubjectAccessReview) whether the chart's ServiceAccount may do this."""
        from kubernetes import client

        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=self.user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}",
                        "system:authenticated"],
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb, resource=resource, group=group, namespace=namespace,
                    subresource=subresource or None,
                ),
            )
        )
        out = self.authz.create_subject_access_review(review)
        return out.status is not None and bool(out.status.allowed)


def helm(cluster: Cluster, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(cluster.bin_dir / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def make_namespace(cluster: Cluster, prefix: str) -> str:
    """A namespace enforcing Pod Security `restricted`, with its default ServiceAccount ready."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kubeforge-tests",
                                              "pod-security.kubernetes.io/enforce": "restricted"}},
    }))
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        assert time.monotonic() < deadline, f"{name}: default ServiceAccount never appeared"
        time.sleep(0.5)
    return name


def adopt_existing_crds(cluster: Cluster, release: str, namespace: str) -> None:
    """Let the release take over CRDs that other tests already applied (Helm's documented adoption)."""
    for crd in CRD_NAMES:
        if cluster.kubectl("get", "crd", crd, check=False).returncode:
            continue
        cluster.kubectl("label", "crd", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        cluster.kubectl("annotate", "crd", crd, f"meta.helm.sh/release-name={release}",
                        f"meta.helm.sh/release-namespace={namespace}", "--overwrite")


def install(cluster: Cluster, name: str, namespace: str, *values: str, crds: bool = True) -> Release:
    if crds:
        adopt_existing_crds(cluster, name, namespace)
    proc = helm(cluster, "install", name, str(CHART), "-n", namespace, "--wait", "--timeout", "180s",
                "--set", f"crds.enabled={'true' if crds else 'false'}", "--set", "crds.keep=true", *values)
    return Release(cluster, name, namespace, proc.stdout)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """Cluster-wide install (ClusterRole) with CRDs, waited until the operator Deployment is available."""
    ns = make_namespace(cluster, "kf-helm")
    rel = install(cluster, f"kf{uuid.uuid4().hex[:5]}", ns,
                  "--set", "workloadImages.trainer=registry.local/trainer:1")
    try:
        yield rel
    finally:
        helm(cluster, "uninstall", rel.name, "-n", ns, "--wait", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_install_creates_operator_objects(release: Release) -> None:
    k = release.cluster.kubectl
    dep = json.loads(k("get", "deployment", release.fullname, "-n", release.namespace, "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    # Admitted under Pod Security `restricted` and scheduled: the pod exists and the Deployment is available.
    assert dep["status"].get("availableReplicas") == 1, dep["status"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBEFORGE_TRAINER_IMAGE"] == "registry.local/trainer:1"
    k("get", "serviceaccount", release.fullname, "-n", release.namespace)
    k("get", "service", f"{release.fullname}-metrics", "-n", release.namespace)
    k("get", "clusterrole", release.fullname)
    k("get", "clusterrolebinding", release.fullname)
    assert len(k("get", "configmap", "-n", release.namespace, "-l", "grafana_dashboard=1", "-o", "name")
               .stdout.split()) == 4
    for crd in CRD_NAMES:
        meta = json.loads(k("get", "crd", crd, "-o", "json").stdout)["metadata"]
        assert meta["annotations"]["meta.helm.sh/release-name"] == release.name
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
    k("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{c}" for c in CRD_NAMES])


def test_notes_tell_the_user_what_was_installed(release: Release) -> None:
    assert f"rollout status deployment/{release.fullname}" in release.install_output
    assert "all namespaces (ClusterRole)" in release.install_output
    assert "kept on uninstall" in release.install_output


# (verb, resource, group, subresource): what the controllers do.
NEEDED = [
    ("create", "jobs", "batch", ""), ("delete", "jobs", "batch", ""), ("list", "jobs", "batch", ""),
    ("get", "jobs", "batch", ""), ("watch", "jobs", "batch", ""), ("watch", "trainingjobs", "kubeforge.io", ""),
    ("patch", "trainingjobs", "kubeforge.io", ""), ("get", "datasets", "kubeforge.io", ""),
    ("patch", "trainingjobs", "kubeforge.io", "status"), ("patch", "modeldeployments", "kubeforge.io", "status"),
    ("patch", "evaluations", "kubeforge.io", "status"), ("list", "datasets", "kubeforge.io", ""),
    ("update", "rlhfjobs", "kubeforge.io", "finalizers"),
    ("create", "services", "", ""), ("patch", "services", "", ""),
    ("list", "pods", "", ""), ("create", "events", "", ""), ("create", "deployments", "apps", ""),
    ("patch", "deployments", "apps", ""), ("delete", "deployments", "apps", ""),
    ("watch", "deployments", "apps", ""), ("list", "deployments", "apps", ""),
    ("create", "horizontalpodautoscalers", "autoscaling", ""), ("patch", "horizontalpodautoscalers", "autoscaling", ""),
    ("delete", "horizontalpodautoscalers", "autoscaling", ""), ("create", "poddisruptionbudgets", "policy", ""),
    ("patch", "poddisruptionbudgets", "policy", ""), ("delete", "poddisruptionbudgets", "policy", ""),
]
# Things a compromised operator must not be able to do.
FORBIDDEN = [
    ("get", "secrets", "", ""), ("list", "secrets", "", ""), ("watch", "secrets", "", ""),
    ("create", "pods", "", ""), ("delete", "pods", "", ""), ("create", "pods", "", "exec"),
    ("delete", "nodes", "", ""), ("patch", "nodes", "", ""),
    ("create", "clusterrolebindings", "rbac.authorization.k8s.io", ""),
    ("create", "rolebindings", "rbac.authorization.k8s.io", ""),
    ("escalate", "clusterroles", "rbac.authorization.k8s.io", ""),
    ("impersonate", "serviceaccounts", "", ""), ("create", "serviceaccounts", "", "token"),
    ("delete", "namespaces", "", ""), ("patch", "customresourcedefinitions", "apiextensions.k8s.io", ""),
    ("delete", "customresourcedefinitions", "apiextensions.k8s.io", ""),
    ("create", "trainingjobs", "kubeforge.io", ""), ("delete", "modeldeployments", "kubeforge.io", ""),
    ("update", "trainingjobs", "kubeforge.io", ""), ("update", "configmaps", "", ""),
    ("delete", "configmaps", "", ""), ("get", "configmaps", "", ""), ("get", "pods", "", "log"),
    ("create", "configmaps", "", ""),  # stage configs travel in the pod (downwardAPI), no ConfigMap
    ("create", "persistentvolumes", "", ""), ("create", "mutatingwebhookconfigurations",
                                              "admissionregistration.k8s.io", ""),
]


@pytest.mark.parametrize(("verb", "resource", "group", "sub"), NEEDED,
                         ids=[f"{v}-{r}{'-' + s if s else ''}" for v, r, _, s in NEEDED])
def test_operator_can(release: Release, verb: str, resource: str, group: str, sub: str) -> None:
    for ns in ("default", "some-team"):
        assert release.allowed(verb, resource, group, ns, sub), f"operator cannot {verb} {resource}/{sub} in {ns}"


@pytest.mark.parametrize(("verb", "resource", "group", "sub"), FORBIDDEN,
                         ids=[f"{v}-{r}{'-' + s if s else ''}" for v, r, _, s in FORBIDDEN])
def test_operator_cannot(release: Release, verb: str, resource: str, group: str, sub: str) -> None:
    for ns in (None, "default", release.namespace, "kube-system"):
        assert not release.allowed(verb, resource, group, ns, sub), f"operator may {verb} {resource} ({ns})"


def test_cluster_wide_discovery(release: Release) -> None:
    assert release.allowed("watch", "namespaces")
    assert release.allowed("list", "customresourcedefinitions", "apiextensions.k8s.io")
    assert release.allowed("create", "jobs", "batch", None)  # all namespaces at once


def test_namespaced_install_is_confined(cluster: Cluster) -> None:
    """watchNamespaces: Role+RoleBinding in the watched namespace only; nothing elsewhere."""
    home = make_namespace(cluster, "kf-home")
    watched = make_namespace(cluster, "kf-team")
    rel = install(cluster, f"kfns{uuid.uuid4().hex[:4]}", home, "--set", f"watchNamespaces={{{watched}}}",
                  crds=False)
    try:
        assert "namespaces " + watched in rel.install_output
        cluster.kubectl("get", "role", rel.fullname, "-n", watched)
        cluster.kubectl("get", "rolebinding", rel.fullname, "-n", watched)
        assert rel.allowed("create", "jobs", "batch", watched)
        assert rel.allowed("patch", "rlhfjobs", "kubeforge.io", watched, "status")
        assert not rel.allowed("create", "jobs", "batch", home)
        assert not rel.allowed("create", "jobs", "batch", "default")
        assert not rel.allowed("create", "jobs", "batch", None)
        assert not rel.allowed("watch", "namespaces")
        assert not rel.allowed("get", "secrets", "", watched)
        assert rel.allowed("watch", "customresourcedefinitions", "apiextensions.k8s.io")
        dep = json.loads(cluster.kubectl("get", "deployment", rel.fullname, "-n", home, "-o", "json").stdout)
        assert f"--namespace={watched}" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    finally:
        helm(cluster, "uninstall", rel.name, "-n", home, "--wait", check=False)
        for ns in (home, watched):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_upgrade_then_uninstall_keeps_crds(release: Release) -> None:
    """Last in the module: upgrade changes the Deployment; uninstall removes it but keeps the CRDs."""
    k = release.cluster.kubectl
    release.helm("upgrade", release.name, str(CHART), "--reuse-values", "--wait", "--timeout", "180s",
                 "--set", "workloadImages.trainer=registry.local/trainer:2", "--set", "operator.logLevel=debug")
    dep = json.loads(k("get", "deployment", release.fullname, "-n", release.namespace, "-o", "json").stdout)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in c["env"]}["KUBEFORGE_TRAINER_IMAGE"] == "registry.local/trainer:2"
    assert "--debug" in c["args"]
    history = json.loads(release.helm("history", release.name, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"

    values = json.loads(release.helm("get", "values", release.name, "--all", "-o", "json").stdout)
    assert values["crds"]["keep"] is True, "refusing to uninstall a release that would delete shared CRDs"
    release.helm("uninstall", release.name, "--wait")
    gone = k("get", "deployment", release.fullname, "-n", release.namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert k("get", "clusterrole", release.fullname, check=False).returncode != 0
    assert k("get", "serviceaccount", release.fullname, "-n", release.namespace, check=False).returncode != 0
    for crd in CRD_NAMES:
        k("get", "crd", crd)  # kept
