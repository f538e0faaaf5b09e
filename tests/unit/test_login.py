"""The operator logs in without the `kubernetes` client library (26 MiB of its RSS) unless a kubeconfig's login
plugin needs it: in a pod from the service account and KUBERNETES_SERVICE_HOST, else from the kubeconfig;
kopf's watches and the operator's requests get the same credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubeforge import login
from kubeforge.controllers import credentials


def kubeconfig(path: Path, user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "other", "user": {"token": "not-this-one"}}, {"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    return path


@pytest.fixture
def outside_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(login, "SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")


def test_in_a_pod_the_service_account_and_the_service_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """client-go's in-cluster config: the address from the environment (a bare kubelet node has no cluster DNS
    for kopf's kubernetes.default.svc), the token read again on each load (the kubelet rotates it)."""
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok-1\n")
    (sa / "ca.crt").write_text("not read here")
    (sa / "namespace").write_text("kf-system")
    monkeypatch.setattr(login, "SERVICE_ACCOUNT_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kc", {"exec": {"command": "never-run"}})))
    info = credentials.load()
    assert (info.server, info.token, info.ca_path, info.default_namespace) == (
        "https://10.96.0.1:443", "tok-1", str(sa / "ca.crt"), "kf-system")
    assert info.as_http_headers() == {"Authorization": "Bearer tok-1"}
    assert not login.needs_client_library(), "in a pod the kubeconfig does not matter"
    (sa / "token").write_text("tok-2")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    info = credentials.load()
    assert (info.server, info.token) == ("https://[fd00::1]:443", "tok-2")


def test_outside_a_pod_the_current_contexts_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 outside_a_pod: None) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{kubeconfig(tmp_path / 'kc', {'token': 't0'})}{os.pathsep}{tmp_path / 'absent'}")
    assert login.kubeconfig_user() == {"token": "t0"}
    assert not login.needs_client_library()
    info = credentials.load()
    assert (info.server, info.token, info.insecure) == ("https://10.0.0.1:6443", "t0", True)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(kopf.LoginError, match=r"no credentials.*set KUBECONFIG"):
        credentials.load()
    # a file path relative to the kubeconfig that names it, as kubectl reads it
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "token").write_text("from-a-file\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "sub" / "kc", {"tokenFile": "token"})))
    assert credentials.load().token == "from-a-file"


def test_a_login_plugin_keeps_the_client_library_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          outside_a_pod: None) -> None:
    """A cloud login (an `exec` plugin) is what only the client library runs: it is kept, and the token is the
    one the real plugin printed."""
    from kubernetes.config import kube_config

    path = kubeconfig(tmp_path / "kc", _plugin(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))  # read at its import
    assert login.needs_client_library()
    info = credentials.load()
    assert info.server == "https://10.0.0.1:6443"
    assert info.as_http_headers() == {"Authorization": "Bearer from-the-plugin"}


PROBE = textwrap.dedent("""
    import json, sys
    from kubeforge import login
    kept_out = login.keep_client_library_out()
    import kopf, kubeforge.controllers
    from kubeforge.controllers import credentials
    info = credentials.load()
    # this process's peak (ru_maxrss would carry the forking test process's peak over the exec)
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"kept_out": kept_out, "loaded": sorted(m for m in sys.modules if m.startswith("kubernetes.")),
                      "token": info.token, "rss_mib": int(hwm.split()[1]) / 1024}))
""")


def _plugin(tmp_path: Path) -> dict[str, Any]:
    """A real `exec` login plugin: a script printing an ExecCredential, as cloud CLIs do."""
    script = tmp_path / "plugin.py"
    script.write_text(textwrap.dedent("""
        import json
        print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                          "status": {"token": "from-the-plugin"}}))
    """))
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(script)], "interactiveMode": "Never"}}


@pytest.mark.parametrize("plugin", [False, True], ids=["token", "exec-plugin"])
def test_the_operator_process_loads_the_client_library_only_for_a_plugin(tmp_path: Path, plugin: bool) -> None:
    """What `kubeforge operator` does before importing kopf, in a fresh process: with a plain kubeconfig no
    `kubernetes.*` module loads, not even through kopf's optional support, and the operator's modules fit
    in far less memory; with a login plugin the library loads and runs it."""
    user = _plugin(tmp_path) if plugin else {"token": "t0"}
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(kubeconfig(tmp_path / "kc", user))
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if plugin:
        assert not out["kept_out"] and "kubernetes.client" in out["loaded"], out
        assert out["token"] == "from-the-plugin" and out["rss_mib"] > 70, out
    else:
        assert out["kept_out"] and out["loaded"] == [] and out["token"] == "t0", out
        assert out["rss_mib"] < 70, out
