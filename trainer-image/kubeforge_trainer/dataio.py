"""Reading and writing records and Dataset splits, for every stage.

One place knows the URI schemes (`file://`, `pvc://`, plain paths, `s3://` and other fsspec
protocols, `hf://`) and the file formats (jsonl, csv, parquet, text), so `prepare`, the training
stages and `evaluate` read data the same way. A prepared Dataset is a directory holding
`train.parquet`, `validation.parquet` and `test.parquet`.

API:
    read_split(dataset_uri, split) -> datasets.Dataset          (training stages)
    read_split_records(dataset_uri, split) -> list[dict]        (prepare, evaluate)
    read_records(uri_or_glob, format) -> list[dict]             (raw sources)
    write_split(output_dir, split, records, schema) -> Path     (prepare)
    staged_output(output_uri) -> local dir, uploaded on exit    (remote outputs)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from kubeforge.stage import local_path

from .runtime import StageError

if TYPE_CHECKING:
    import datasets
    from fsspec import AbstractFileSystem

SPLITS: tuple[str, ...] = ("train", "validation", "test")
FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "text")
# File name endings → format, for `format: auto` and for directory prefixes.
EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
GLOB_CHARS = set("*?[")


def is_local(uri: str) -> bool:
    """Whether `uri` maps to a path on this machine (plain path, `file://`, `pvc://`)."""
    return "://" not in uri or uri.startswith(("file://", "pvc://"))


def _fs(uri: str) -> tuple[AbstractFileSystem, str]:
    """fsspec filesystem and in-filesystem path for a URI (local schemes mapped first)."""
    import fsspec

    target = str(local_path(uri)) if is_local(uri) else uri
    try:
        fs, path = fsspec.core.url_to_fs(target)
    except (ImportError, ValueError) as exc:
        scheme = uri.split("://", 1)[0]
        raise StageError(
            f"{uri}: cannot open {scheme}:// storage ({exc}); install the fsspec backend for it "
            f"(for s3:// the `s3` extra: `pip install 'kubeforge[s3]'`, part of `kubeforge[train]` and the "
            f"trainer image)",
            reason="StorageUnavailable",
        ) from exc
    return fs, path


def format_of(path: str, declared: str = "auto") -> str:
    """The format of one file: the declared one, or inferred from its extension."""
    if declared != "auto":
        if declared not in FORMATS:
            raise StageError(f"format {declared!r} is not supported; use one of {', '.join(FORMATS)} or auto")
        return declared
    name = path.lower()
    for comp in COMPRESSIONS:
        name = name.removesuffix(comp)
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise StageError(
        f"{path}: cannot infer the format from the file name; set spec.format to one of {', '.join(FORMATS)}"
    )


def expand(uri: str) -> list[str]:
    """Files named by a URI: itself, a glob's matches, or every data file under a directory (sorted)."""
    fs, path = _fs(uri)
    if GLOB_CHARS & set(path):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if _has_data_extension(p)]
    elif fs.exists(path):
        found = [path]
    else:
        raise StageError(f"{uri}: no such file or directory; check spec.source.uris", reason="SourceNotFound")
    if not found:
        raise StageError(f"{uri}: matched no data files; check spec.source.uris", reason="SourceNotFound")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return sorted(found)
    return sorted(fs.unstrip_protocol(p) for p in found)


def _has_data_extension(path: str) -> bool:
    name = path.lower()
    for comp in COMPRESSIONS:
        name = name.removesuffix(comp)
    return any(name.endswith(ext) for ext in EXTENSIONS)


def _read_file(path: str, fmt: str) -> list[dict[str, Any]]:
    """Records of one file (compression inferred from the name)."""
    import fsspec

    if fmt == "parquet":
        with fsspec.open(path, "rb") as fh:
            return pq.read_table(fh).to_pylist()  # type: ignore[no-any-return]
    if fmt == "csv":
        with fsspec.open(path, "rb", compression="infer") as fh:
            return pacsv.read_csv(fh).to_pylist()  # type: ignore[no-any-return]
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer") as fh:
        text = fh.read()
    if fmt == "text":
        return [{"text": line} for line in text.splitlines() if line.strip()]
    stripped = text.lstrip()
    if stripped.startswith("["):  # a .json file holding one array
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StageError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        return [_as_record(path, i + 1, r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(_as_record(path, n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise StageError(f"{path}:{n}: invalid JSON line ({exc.msg}); fix the file or set spec.format") from exc
    return out


def _as_record(path: str, n: int, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StageError(f"{path}:{n}: expected a JSON object per record, got {type(value).__name__}")
    return value


def _read_hf(uri: str, config: str | None, split: str | None, limit: int | None) -> list[dict[str, Any]]:
    """A Hugging Face hub dataset through `datasets.load_dataset` (needs network or a warm cache)."""
    import datasets

    name = uri.removeprefix("hf://").strip("/")
    wanted = split or "train"
    try:
        ds = datasets.load_dataset(name, config, split=wanted)
    except Exception as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StageError(
            f"{uri}: cannot load Hugging Face dataset {name!r} (config={config!r}, split={wanted!r}): {line}; "
            "the pod needs network access to the hub (HF_HUB_OFFLINE must be unset) or a pre-filled HF cache, "
            "or copy the data to pvc:// or s3:// and list that in spec.source.uris",
            reason="SourceUnavailable",
        ) from exc
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.to_list()  # type: ignore[no-any-return]


def read_records(
    uri: str,
    format: str = "auto",
    *,
    hf_config: str | None = None,
    hf_split: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Records from a file, glob, directory prefix or `hf://` dataset, in a stable order."""
    if uri.startswith("hf://"):
        return _read_hf(uri, hf_config, hf_split, limit)
    out: list[dict[str, Any]] = []
    for path in expand(uri):
        out.extend(_read_file(path, format_of(path, format)))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def split_path(dataset_uri: str, split: str) -> str:
    """URI of one split file of a prepared Dataset."""
    return f"{dataset_uri.rstrip('/')}/{split}.parquet"


def read_split_table(dataset_uri: str, split: str) -> pa.Table:
    """One split (or `all`: train+validation+test concatenated) as an Arrow table."""
    if split == "all":
        tables = [read_split_table(dataset_uri, s) for s in SPLITS]
        return pa.concat_tables(tables, promote_options="default")
    if split not in SPLITS:
        raise StageError(f"split {split!r} is not one of {', '.join(SPLITS)} or all")
    uri = split_path(dataset_uri, split)
    fs, path = _fs(uri)
    if not fs.exists(path):
        raise StageError(
            f"{uri}: split {split!r} not found; the input must be the output directory of a succeeded Dataset",
            reason="DatasetNotReady",
        )
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh)


def read_split_records(dataset_uri: str, split: str) -> list[dict[str, Any]]:
    """One split of a prepared Dataset as plain records."""
    return read_split_table(dataset_uri, split).to_pylist()  # type: ignore[no-any-return]


def read_split(dataset_uri: str, split: str) -> datasets.Dataset:
    """One split of a prepared Dataset as an in-memory `datasets.Dataset` (no HF cache files)."""
    from datasets import Dataset, NamedSplit
    from datasets.table import InMemoryTable

    table = read_split_table(dataset_uri, split)
    return Dataset(InMemoryTable(table), split=NamedSplit(split))


def schema_for(records: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> pa.Schema:
    """One Arrow schema for all splits (so an empty split still has the task's columns)."""
    if records:
        inferred = pa.Table.from_pylist(records).schema
        return pa.schema([inferred.field(c) for c in columns if c in inferred.names])
    return pa.schema([pa.field(c, pa.string()) for c in columns])


def write_split(
    output_dir: Path, split: str, records: list[dict[str, Any]], schema: pa.Schema | None = None
) -> Path:
    """Write one split as `<output_dir>/<split>.parquet` (deterministic bytes for equal records)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(records, schema=schema)
    path = output_dir / f"{split}.parquet"
    pq.write_table(table, path, compression="zstd", write_statistics=False)
    return path


@contextlib.contextmanager
def staged_output(output_uri: str) -> Iterator[Path]:
    """A local directory for the stage's output; for remote URIs it is uploaded when the block ends."""
    if is_local(output_uri):
        path = local_path(output_uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="kubeforge-out-"))
    try:
        yield tmp
        fs, root = _fs(output_uri)
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            target = f"{root.rstrip('/')}/{f.relative_to(tmp).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(f), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
