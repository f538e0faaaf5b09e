"""s3:// against a real S3 API: moto's server on localhost, configured exactly as the operator configures a pod.

The Dataset's Job manifest comes from the operator's builder; its container env (AWS_ENDPOINT_URL from
`spec.output.s3Endpoint`, the keys of `spec.output.s3Secret`) and its ConfigMap's config.yaml are what the
stage runs with, through the container entrypoint in a subprocess. Nothing is patched into s3fs: the endpoint
and credentials reach botocore through the environment only, as in the trainer image.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import s3fs
from kubeforge.api.v1alpha1 import Dataset
from kubeforge.builders import dataset as dataset_builder
from kubeforge.builders.workloads import stage_file
from kubeforge.settings import OperatorSettings
from kubeforge.stage import CONFIG_FILE, StageConfig
from kubeforge_trainer import dataio
from kubeforge_trainer.runtime import StageError
from moto.server import ThreadedMotoServer

SECRET = {"AWS_ACCESS_KEY_ID": "kubeforge-test", "AWS_SECRET_ACCESS_KEY": "kubeforge-test-secret"}
# Ambient AWS settings of this machine must not leak into what the pod would see.
AMBIENT = ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
           "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; this process's AWS env is the pod's (endpoint + secret keys, no region, no profile)."""
    for name in AMBIENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for k, v in SECRET.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would keep an earlier test's endpoint
    name = f"kf-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=name)
    return name


def pod_of(ds: Dataset) -> tuple[StageConfig, list[str], dict[str, str]]:
    """The Dataset Job's config.yaml, command and env as the operator renders them (secretKeyRefs from SECRET)."""
    children = dataset_builder.get_children(ds, {}, OperatorSettings())
    job = next(c for c in children if c["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in container["env"]:
        ref: dict[str, Any] | None = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = SECRET[ref["key"]] if ref else var["value"]
    config = StageConfig.model_validate_json(stage_file(job, CONFIG_FILE))
    return config, list(container["command"]), env


def test_prepare_reads_and_writes_s3_like_a_pod(bucket: str, endpoint: str, tmp_path: Path) -> None:
    rows = [{"text": f"record number {i} about the {'red' if i % 2 else 'blue'} boat"} for i in range(20)]
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="raw/part-0.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows[:12]))
    s3.put_object(Bucket=bucket, Key="raw/part-1.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows[12:]))
    ds = Dataset.model_validate({
        "metadata": {"name": "docs", "namespace": "team", "generation": 1},
        "spec": {
            "source": {"uris": [f"s3://{bucket}/raw/*.jsonl"]},
            "task": "text",
            "output": {"uri": f"s3://{bucket}/prepared/docs", "s3Secret": {"name": "s3-creds"},
                       "s3Endpoint": endpoint},
        },
    })
    config, command, pod_env = pod_of(ds)
    assert pod_env["AWS_ENDPOINT_URL"] == endpoint and pod_env["AWS_ACCESS_KEY_ID"] == SECRET["AWS_ACCESS_KEY_ID"]
    assert config.output_uri == f"s3://{bucket}/prepared/docs/g1" and config.progress_path is not None  # run g1
    config = config.model_copy(update={"metrics_port": None})  # no Prometheus port taken on a shared machine
    cfg_path = tmp_path / CONFIG_FILE
    cfg_path.write_text(config.dump())
    assert command[:3] == ["python", "-m", "kubeforge_trainer"]
    argv = [sys.executable, *command[1:-1], str(cfg_path)]
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT}  # the fixture's env, minus the pod's keys
    env |= pod_env | {"HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
                      "KUBEFORGE_TERMINATION_LOG": str(tmp_path / "termination")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="prepared/docs/g1/")["Contents"])
    assert keys == [f"prepared/docs/g1/{n}" for n in ("lineage.json", "progress.json", "result.json", "stats.json",
                                                   "test.parquet", "train.parquet", "validation.parquet")]
    result = json.loads(s3.get_object(Bucket=bucket, Key="prepared/docs/g1/result.json")["Body"].read())
    assert result["succeeded"] is True and result["artifact"]["uri"] == config.output_uri
    assert json.loads((tmp_path / "termination").read_text())["succeeded"] is True
    # The records that come back over S3 are the ones that went in (split, not changed).
    back = dataio.read_split_records(config.output_uri, "all")
    assert sorted(r["text"] for r in back) == sorted(r["text"] for r in rows)
    # What a training stage loads: the train split as a datasets.Dataset, read over S3.
    train = dataio.read_split(config.output_uri, "train")
    assert len(train) == len(dataio.read_split_records(config.output_uri, "train")) > 0
    assert set(train["text"]) <= {r["text"] for r in rows}


def test_missing_s3_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without s3fs installed the one-line error says which extra brings it."""
    registry = importlib.import_module("fsspec.registry")  # `fsspec.registry` is the read-only view
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # forget the imported class; restored after
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` now fails as on a machine without it
    with pytest.raises(StageError, match=r"s3://.*pip install 'kubeforge\[s3\]'.*kubeforge\[train\]") as err:
        dataio.read_records("s3://bucket/key.jsonl")
    assert err.value.reason == "StorageUnavailable"
