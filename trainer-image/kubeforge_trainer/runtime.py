"""Plumbing every stage shares: results, progress, metrics, digests, one-line failures.

Kept free of torch so `prepare` and the operator-side tests import it cheaply.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubeforge.api.v1alpha1.status import Artifact, LineageEntry, Progress
from kubeforge.stage import TERMINATION_LOG, StageConfig, StageResult, local_path

# Files a stage writes next to its artifact that are not part of it.
NOT_ARTIFACT = {"progress.json", "result.json", "lineage.json", "stage.log"}
NOT_ARTIFACT_DIRS = {"checkpoints"}


class StageError(Exception):
    """An expected failure with an actionable one-line message (bad config or data)."""

    def __init__(self, message: str, reason: str = "InvalidInput") -> None:
        super().__init__(message)
        self.reason = reason


def artifact_files(root: Path) -> list[Path]:
    """Files that make up an artifact directory, in a stable order."""
    if root.is_file():
        return [root]
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in NOT_ARTIFACT_DIRS and str(rel) not in NOT_ARTIFACT:
            out.append(p)
    return out


def digest_path(root: Path) -> tuple[str, int]:
    """`sha256:` digest over relative names and contents, and the total size in bytes."""
    h = hashlib.sha256()
    size = 0
    base = root if root.is_dir() else root.parent
    for f in artifact_files(root):
        h.update(str(f.relative_to(base)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def artifact_for(uri: str) -> Artifact:
    """Artifact (uri, digest, size) of a finished output directory."""
    digest, size = digest_path(local_path(uri))
    return Artifact(uri=uri, digest=digest, size_bytes=size)


def lineage_of(config: StageConfig) -> list[LineageEntry]:
    """The stage's resolved inputs as lineage entries (sorted by key for determinism)."""
    return [config.inputs[k].lineage() for k in sorted(config.inputs)]


def write_lineage(config: StageConfig, artifact: Artifact) -> None:
    """`lineage.json` beside the artifact: what produced it, from which inputs."""
    out = local_path(config.output_uri)
    out.mkdir(parents=True, exist_ok=True)
    body = {
        "artifact": artifact.to_wire(),
        "producer": {k: config.resource.get("metadata", {}).get(k) for k in ("namespace", "name", "generation")}
        | {"kind": config.resource["kind"], "stage": config.stage},
        "inputs": [e.to_wire() for e in lineage_of(config)],
    }
    (out / "lineage.json").write_text(json.dumps(body, indent=2, sort_keys=True))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: torchrun ranks may write at once
    tmp.write_text(text)
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    """Replace a small file: atomically for local URIs, one PUT for `s3://` and other fsspec ones.

    An object store has no rename, but a single PUT replaces the object whole, so readers never see half.
    """
    if "://" not in uri or uri.startswith(("file://", "pvc://")):
        _atomic_write(local_path(uri), text)
        return
    import fsspec

    with fsspec.open(uri, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_result(config: StageConfig, result: StageResult) -> None:
    """Write the result file and, inside a pod, the termination message the operator reads."""
    if config.result_path:
        write_text(config.result_path, json.dumps(result.to_wire(), indent=2, sort_keys=True))
    term = Path(os.environ.get("KUBEFORGE_TERMINATION_LOG", TERMINATION_LOG))
    if term.parent.is_dir() and (term.exists() or os.environ.get("KUBEFORGE_TERMINATION_LOG")):
        with contextlib.suppress(OSError):
            term.write_text(result.termination_message())


class ProgressReporter:
    """Rewrites progress.json (throttled) and exposes the same numbers as Prometheus gauges."""

    def __init__(self, config: StageConfig, min_interval: float = 1.0) -> None:
        # A URI (local or s3://: the output directory's own scheme); None writes nothing (other ranks).
        self.path: str | None = config.progress_path or None
        self.min_interval = min_interval
        self.started = time.monotonic()
        self._last_write = 0.0
        self.latest = Progress()
        meta = config.resource.get("metadata", {})
        self._labels = {
            "kind": config.resource["kind"],
            "name": str(meta.get("name", "")),
            "namespace": str(meta.get("namespace", "default")),
        }
        self._gauges: dict[str, Any] = {}
        if config.metrics_port:
            self._start_metrics(config.metrics_port)

    def _start_metrics(self, port: int) -> None:
        from prometheus_client import Gauge, start_http_server

        names = {
            "loss": "kubeforge_train_loss",
            "step": "kubeforge_train_step",
            "total_steps": "kubeforge_train_total_steps",
            "tokens_per_second": "kubeforge_train_tokens_per_second",
            "learning_rate": "kubeforge_train_learning_rate",
        }
        for field, metric in names.items():
            self._gauges[field] = Gauge(metric, f"Stage {field.replace('_', ' ')}", list(self._labels))
        try:
            start_http_server(port, addr=os.environ.get("KUBEFORGE_METRICS_ADDR", "0.0.0.0"))
        except OSError as exc:  # a second local stage on the same port: metrics off, work goes on
            print(f"warning: metrics port {port} unavailable ({exc}); metrics disabled", file=sys.stderr)

    def update(self, force: bool = False, **fields: float | int | None) -> Progress:
        """Merge new numbers, derive percent/ETA, and persist when due."""
        data = self.latest.model_dump()
        data.update({k: v for k, v in fields.items() if v is not None})
        step, total = data.get("step"), data.get("total_steps")
        if step and total:
            elapsed = time.monotonic() - self.started
            data["percent"] = f"{min(100, int(100 * step / total))}%"
            data["eta_seconds"] = round(elapsed / step * max(total - step, 0), 1)
        self.latest = Progress.model_validate(data)
        for field, gauge in self._gauges.items():
            value = data.get(field)
            if value is not None:
                gauge.labels(**self._labels).set(float(value))
        now = time.monotonic()
        if self.path is not None and (force or now - self._last_write >= self.min_interval):
            write_text(self.path, json.dumps(self.latest.to_wire(), sort_keys=True))
            self._last_write = now
        return self.latest


StageFn = Callable[[StageConfig, ProgressReporter], StageResult]


def run_stage(fn: StageFn, config: StageConfig) -> int:
    """Run a stage, turning every outcome into a StageResult; returns the exit code."""
    reporter = ProgressReporter(config)
    try:
        result = fn(config, reporter)
    except StageError as exc:
        result = StageResult(succeeded=False, reason=exc.reason, message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
    except Exception as exc:  # a crash: keep the traceback in the log, one line in status
        traceback.print_exc()
        line = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        result = StageResult(succeeded=False, reason="StageCrashed", message=line)
        print(f"error: {line}", file=sys.stderr)
    if result.progress is None:
        result.progress = reporter.update(force=True)
    write_result(config, result)
    return 0 if result.succeeded else 1
