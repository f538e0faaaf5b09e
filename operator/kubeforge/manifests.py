"""Load and validate Kubeforge manifests offline, with errors that name the file, object and field."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .api.v1alpha1 import API_VERSION, KINDS, KubeResource

MANIFEST_SUFFIXES = {".yaml", ".yml", ".json"}


@dataclass(frozen=True)
class Document:
    """One YAML document and where it came from."""

    source: str
    index: int
    body: dict[str, Any]

    @property
    def label(self) -> str:
        """`file#N (Kind/name)` for messages."""
        kind = self.body.get("kind", "?")
        name = (self.body.get("metadata") or {}).get("name", "?")
        return f"{self.source}#{self.index} ({kind}/{name})"


class ManifestError(ValueError):
    """A manifest failed validation; `problems` lists one line per field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# Written into every `kubeforge run` workdir: a directory holding it is state and artifacts, not manifests
# (a workdir inside the manifests' directory would otherwise be read back as 100s of bad manifests).
WORKDIR_MARKER = ".kubeforge-workdir"


def _manifest_files(root: Path) -> Iterator[Path]:
    """Manifest files below `root`, skipping hidden files and directories and runner workdirs."""
    workdirs = [m.parent for m in root.rglob(WORKDIR_MARKER)]
    for f in root.rglob("*"):
        rel = f.relative_to(root).parts
        if f.suffix not in MANIFEST_SUFFIXES or any(part.startswith(".") for part in rel):
            continue
        if not any(f.is_relative_to(w) for w in workdirs):
            yield f


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded (sorted; not into hidden directories or runner workdirs)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(_manifest_files(p)))
        elif p.exists():
            out.append(p)
        else:
            raise ManifestError([f"{p}: no such file or directory"])
    return out


def iter_documents(paths: Iterable[str | Path]) -> Iterator[Document]:
    """Every non-empty YAML document in the given files/directories."""
    for path in expand_paths(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError([f"{path}: invalid YAML: {exc}"]) from exc
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ManifestError([f"{path}#{i}: a manifest must be a mapping, got {type(doc).__name__}"])
            yield Document(str(path), i, doc)


def format_loc(loc: tuple[int | str, ...]) -> str:
    """pydantic error location → `spec.peft.method` / `spec.metrics[2]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(object)"


def explain(exc: ValidationError) -> list[str]:
    """One `field: problem` line per pydantic error."""
    lines = []
    for err in exc.errors():
        loc = format_loc(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; fields are camelCase)"
        lines.append(f"{loc}: {msg}")
    return lines


def parse(body: dict[str, Any], label: str = "manifest") -> KubeResource:
    """Validate one object against its kind's model."""
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version != API_VERSION:
        raise ManifestError([f"{label}: apiVersion: must be {API_VERSION}, got {api_version!r}"])
    model = KINDS.get(str(kind))
    if model is None:
        raise ManifestError([f"{label}: kind: must be one of {', '.join(KINDS)}, got {kind!r}"])
    name = (body.get("metadata") or {}).get("name")
    if not name:
        raise ManifestError([f"{label}: metadata.name: required"])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ManifestError([f"{label}: {line}" for line in explain(exc)]) from exc


def load(paths: Iterable[str | Path]) -> list[KubeResource]:
    """Parse every manifest, collecting all problems before raising."""
    resources: list[KubeResource] = []
    problems: list[str] = []
    for doc in iter_documents(paths):
        try:
            resources.append(parse(doc.body, doc.label))
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return resources
