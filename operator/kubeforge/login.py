"""Where the operator's credentials come from, decided without kopf or the `kubernetes` client library.

The library costs about 26 MiB of RSS (its ~700 generated model modules) in an operator whose whole budget
is 150 MB, and kopf imports it whenever it can. Logging in needs none of it in the common cases:

* in a pod: the service account's token and CA, and the API server's address from KUBERNETES_SERVICE_HOST
  and _PORT, as client-go's in-cluster config does (kopf's own fallback names kubernetes.default.svc, which
  needs cluster DNS; a bare kubelet node has none);
* else a kubeconfig with a token, a basic-auth user or client certificates.

A kubeconfig user with an `exec` or `auth-provider` plugin (cloud logins) needs the library after all. So the
`operator` command calls `keep_client_library_out` before it imports kopf, and controllers/credentials.py
turns the answer into kopf's ConnectionInfo for kopf's watches and the operator's own requests alike.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CLIENT_LIBRARY = "kubernetes"
PLUGIN_KEYS = ("exec", "auth-provider")


def pod_service_account(sa_dir: Path | None = None) -> dict[str, str | None] | None:
    """server, token, ca_path and namespace of the pod's service account; None outside a pod."""
    sa = sa_dir or SERVICE_ACCOUNT_DIR
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT") or "443"
    token = sa / "token"
    if not host or not token.is_file():
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca, namespace = sa / "ca.crt", sa / "namespace"
    return {
        "server": f"https://{host}:{port}",
        "token": token.read_text().strip() or None,
        "ca_path": str(ca) if ca.is_file() else None,
        "namespace": namespace.read_text().strip() if namespace.is_file() else None,
    }


def kubeconfig_paths() -> list[str]:
    """The kubeconfig files there are: KUBECONFIG's (as kubectl, absent ones are skipped) or ~/.kube/config."""
    listed = (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)
    return [path for p in listed if p and os.path.isfile(path := os.path.expanduser(p))]


PATH_FIELDS = ("certificate-authority", "client-certificate", "client-key", "tokenFile")


def kubeconfig() -> tuple[dict[str, Any], dict[str, Any]]:
    """The current context's cluster and user entries from the kubeconfig files ({} each when there are
    none). As kubectl merges them: the first file that sets a name wins, and relative file paths are
    relative to the file that names them."""
    current: str | None = None
    entries: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    for path in kubeconfig_paths():
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        current = current or doc.get("current-context")
        base = os.path.dirname(os.path.abspath(path))
        for section, field in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in doc.get(section) or []:
                entry = dict(item.get(field) or {})
                for key in PATH_FIELDS:
                    if isinstance(entry.get(key), str):
                        entry[key] = os.path.join(base, os.path.expanduser(entry[key]))
                entries[section].setdefault(str(item.get("name")), entry)
    context = entries["contexts"].get(str(current), {}) if current else {}
    return (entries["clusters"].get(str(context.get("cluster")), {}),
            entries["users"].get(str(context.get("user")), {}))


def kubeconfig_user() -> dict[str, Any]:
    """The current context's user entry ({} when there is none)."""
    return kubeconfig()[1]


def logs_in_by_plugin(user: dict[str, Any]) -> bool:
    """A kubeconfig user entry that logs in through a plugin (exec, auth-provider) only the client library runs."""
    return any(user.get(key) for key in PLUGIN_KEYS)


def needs_client_library() -> bool:
    """Outside a pod, a kubeconfig whose user logs in through a plugin that only the client library runs."""
    return pod_service_account() is None and logs_in_by_plugin(kubeconfig_user())


def keep_client_library_out() -> bool:
    """Make `import kubernetes` fail in this process, so that kopf skips its optional support for it, unless
    the credentials need it; True when it is kept out. Call before kopf is imported."""
    if CLIENT_LIBRARY in sys.modules or needs_client_library():
        return False
    sys.modules[CLIENT_LIBRARY] = None  # type: ignore[assignment]  # Python's documented way to block an import
    return True
