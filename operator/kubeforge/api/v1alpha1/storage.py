"""Where an artifact is written (`StorageLocation`) and the Secret with its S3 credentials."""

from __future__ import annotations

from pydantic import Field

from .base import MAX_URI, KubeModel, Name


class SecretKeyRef(KubeModel):
    """A Secret holding S3 credentials."""

    name: Name = Field(description="Secret name in the object's namespace.")
    access_key_id_key: str = Field(default="AWS_ACCESS_KEY_ID", description="Key holding the access key id.")
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY", description="Key holding the secret access key."
    )


class StorageLocation(KubeModel):
    """Where an artifact is written."""

    uri: str | None = Field(
        default=None,
        max_length=MAX_URI,
        pattern=r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|s3://[^/]+(/.*)?|file:///.*)$",
        description=(
            "Artifact location: `pvc://claim/sub/path`, `s3://bucket/prefix` or `file:///path`. "
            "Defaults to the operator's artifact store under `<namespace>/<kind>/<name>/`. On a cluster every "
            "run writes below it in its own folder, `g<generation>` (`g<generation>-r<n>` for the n-th re-run "
            "after an input changed), so a new run never overwrites what dependents recorded in their "
            "lineage; `status.artifact.uri` names the folder. `kubeforge run` keeps one folder per object."
        ),
    )
    s3_secret: SecretKeyRef | None = Field(default=None, description="Credentials for `s3://` locations.")
    s3_endpoint: str | None = Field(
        default=None, max_length=MAX_URI, description="Custom S3 endpoint URL (MinIO, Ceph, ...)."
    )
