"""The chart starts `kubeforge operator` with kopf-style flags: the CLI must accept exactly those."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kubeforge.cli import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
HELM = Path.home() / ".cache/kubeforge/tools/bin/helm"


def _chart_args() -> list[str]:
    out = subprocess.run(
        [str(HELM), "template", "kf", str(ROOT / "charts/kubeforge"), "--kube-version", "1.36.3"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for doc in yaml.safe_load_all(out):
        if doc and doc.get("kind") == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            assert container["command"] == ["kubeforge", "operator"]
            return list(container["args"])
    raise AssertionError("chart renders no Deployment")


def test_operator_cli_accepts_the_charts_arguments(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import kopf
    from kubeforge import health

    seen: dict[str, object] = {}
    # Record instead of connecting to a cluster or binding ports: this test is about argument parsing only.
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(health, "serve", lambda url, started: seen.update(readiness=url, started=started))
    args = (
        _chart_args()
        if HELM.exists()
        else ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz",
              "--readiness=http://0.0.0.0:8082/readyz"]
    )
    result = CliRunner().invoke(app, ["operator", *args])
    assert result.exit_code == 0, result.output
    assert seen["standalone"] is True
    assert seen["clusterwide"] is True
    assert seen["liveness_endpoint"] == "http://0.0.0.0:8081/healthz"
    assert seen["readiness"] == "http://0.0.0.0:8082/readyz"
    assert seen["ready_flag"] is seen["started"], "readiness waits for kopf's startup handlers"


def test_operator_cli_requires_a_scope(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("KUBEFORGE_WATCH_NAMESPACES", raising=False)
    result = CliRunner().invoke(app, ["operator"])
    assert result.exit_code == 2
    assert "--namespace" in result.output
