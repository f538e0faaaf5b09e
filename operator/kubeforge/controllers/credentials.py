"""The operator's credentials as kopf's ConnectionInfo: one source for kopf's watches (its login handler)
and the operator's own requests (kube.Client). Where they come from is decided in `kubeforge.login`.

Callers re-read them every CREDENTIALS_TTL_S: the kubelet rotates a projected service-account token, and a
login plugin's token expires.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from .. import login

CREDENTIALS_TTL_S = 60.0

_log = logging.getLogger(__name__)


def _token_file(path: Any) -> str | None:
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


def load(logger: logging.Logger | logging.LoggerAdapter[Any] | None = None) -> kopf.ConnectionInfo:
    """Fresh credentials, or kopf.LoginError naming what is missing."""
    info: kopf.ConnectionInfo | None = None
    if (pod := login.pod_service_account()) is not None:
        info = kopf.ConnectionInfo(server=str(pod["server"]), token=pod["token"], ca_path=pod["ca_path"],
                                   default_namespace=pod["namespace"])
    else:
        cluster, user = login.kubeconfig()  # read once (needs_client_library would read it again)
        if login.logs_in_by_plugin(user):
            info = kopf.login_via_client(logger=logger or _log, settings=kopf.OperatorSettings())
        elif cluster.get("server"):
            info = kopf.ConnectionInfo(
                server=str(cluster["server"]),
                ca_path=cluster.get("certificate-authority"),
                ca_data=cluster.get("certificate-authority-data"),
                insecure=cluster.get("insecure-skip-tls-verify"),
                certificate_path=user.get("client-certificate"),
                certificate_data=user.get("client-certificate-data"),
                private_key_path=user.get("client-key"),
                private_key_data=user.get("client-key-data"),
                username=user.get("username"),
                password=user.get("password"),
                token=user.get("token") or _token_file(user.get("tokenFile")),
            )
    if info is None or not info.server:
        raise kopf.LoginError("no credentials: not in a pod with a service account and KUBERNETES_SERVICE_HOST, "
                              "and no kubeconfig (set KUBECONFIG)")
    return info
