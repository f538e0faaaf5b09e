"""Shared fixtures: the real test control plane (hack/test-cluster.sh), CRDs, per-test namespaces, operator.

Tests that need the cluster carry `@pytest.mark.cluster` and ask for the `cluster` fixture (or one built on
it). The cluster is started once per session by the script and reused across sessions while it is up.
Locally, when the control-plane binaries have not been built yet, cluster tests are skipped with a reason
that says how to build them; in CI (CI=true) or with KUBEFORGE_REQUIRE_CLUSTER=1 they build and fail loudly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "hack" / "test-cluster.sh"
CRD_DIR = REPO / "crds"
TOOLS_DIR = Path(
    os.environ.get("KUBEFORGE_TOOLS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubeforge" / "tools"
)
BIN_DIR = TOOLS_DIR / "bin"
CLUSTER_START_TIMEOUT_S = 45 * 60  # includes a cold build of the binaries in CI


def _must_have_cluster() -> bool:
    """CI (and anyone who asks) must not skip cluster tests: a cluster that cannot start is a failure."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"} or os.environ.get(
        "KUBEFORGE_REQUIRE_CLUSTER", ""
    ) == "1"


@dataclass(frozen=True)
class Cluster:
    """Handle on the running test cluster."""

    kubeconfig: Path
    bin_dir: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's own kubectl against it; output captured as text."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient bound to this cluster."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Start (or reuse) the kwok-backed control plane; point KUBECONFIG, PATH and the kubernetes client at it."""
    if not (BIN_DIR / "kubectl").exists() and not _must_have_cluster():
        pytest.skip(
            f"control-plane binaries not built in {BIN_DIR}: run `hack/test-cluster.sh up` once "
            "(first build takes 15-30 min), or set KUBEFORGE_REQUIRE_CLUSTER=1"
        )
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "up"],
            capture_output=True,
            text=True,
            timeout=CLUSTER_START_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hack/test-cluster.sh up timed out after {exc.timeout}s", pytrace=False)
    if proc.returncode != 0:
        msg = f"hack/test-cluster.sh up failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        if _must_have_cluster():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    kubeconfig = Path(proc.stdout.strip().splitlines()[-1])
    mp = pytest.MonkeyPatch()
    mp.setenv("KUBECONFIG", str(kubeconfig))
    mp.setenv("PATH", f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    from kubernetes import config
    from kubernetes.config import kube_config

    # The client fixes its default path at import time; kopf's login uses that default.
    mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    config.load_kube_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield Cluster(kubeconfig=kubeconfig, bin_dir=BIN_DIR)
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """Install every CRD from crds/ (server-side apply: they exceed the client-side annotation limit)."""
    files = sorted(CRD_DIR.glob("*.yaml"))
    assert files, f"no CRDs in {CRD_DIR}: run `kubeforge crds`"
    for f in files:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kubeforge-tests", "-f", str(f))
    names = [f"crd/{f.name.removesuffix('.yaml')}" for f in files]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return [n.removeprefix("crd/") for n in names]


def _wait_for_service_account(cluster: Cluster, namespace: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while cluster.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"namespace {namespace}: default ServiceAccount not created in {timeout_s}s")
        time.sleep(0.5)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace enforcing the `restricted` Pod Security level; deleted afterwards."""
    name = f"kf-test-{uuid.uuid4().hex[:8]}"
    manifest = f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    app.kubernetes.io/part-of: kubeforge-tests
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
"""
    cluster.kubectl("apply", "-f", "-", input=manifest)
    _wait_for_service_account(cluster, name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def operator(cluster: Cluster, crds: list[str], namespace: str) -> Iterator[Any]:
    """The Kubeforge operator (kopf, in a thread) watching only this test's namespace.

    Yields the `kopf.testing.KopfRunner`; after the test its output is available as `.stdout` and an
    operator crash fails the test (reraise). Readiness is taken from kopf's liveness endpoint.
    """
    from kopf.testing import KopfRunner

    port = _free_port()
    args = [
        "run", "--standalone", "--namespace", namespace, "-m", "kubeforge.controllers",
        "--liveness", f"http://127.0.0.1:{port}/healthz",
    ]
    with KopfRunner(args, timeout=60) as runner:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if runner.future.done():
                raise AssertionError(f"operator exited during startup:\n{runner.output[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("operator did not become live in 60s (kopf liveness endpoint silent)")
            time.sleep(0.25)
        yield runner
