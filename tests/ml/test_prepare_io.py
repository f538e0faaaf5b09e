"""Data reading/writing (dataio) across URI schemes and formats, and the PII scrubber's patterns."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from kubeforge.api.v1alpha1.dataset import Dataset, Pii
from kubeforge.stage import build_stage_config
from kubeforge_trainer import dataio, prepare
from kubeforge_trainer.runtime import ProgressReporter, StageError


@pytest.fixture
def memfs() -> fsspec.AbstractFileSystem:
    """fsspec's in-memory filesystem: the same code path as s3://, without a server."""
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    return fs


def test_remote_glob_directory_and_formats(memfs: fsspec.AbstractFileSystem) -> None:
    with memfs.open("memory://bucket/raw/a.jsonl", "w") as f:
        f.write('{"text": "one"}\n\n{"text": "two"}\n')
    with memfs.open("memory://bucket/raw/b.csv", "w") as f:
        f.write("text,label\nthree,1\n")
    with memfs.open("memory://bucket/raw/notes.bin", "w") as f:
        f.write("ignored: no data extension")
    assert [r["text"] for r in dataio.read_records("memory://bucket/raw/*.jsonl")] == ["one", "two"]
    assert dataio.read_records("memory://bucket/raw") == [
        {"text": "one"}, {"text": "two"}, {"text": "three", "label": 1}
    ]
    assert len(dataio.read_records("memory://bucket/raw", limit=2)) == 2
    with pytest.raises(StageError, match="matched no data files"):
        dataio.read_records("memory://bucket/raw/*.parquet")


def test_local_gzip_json_array_and_text(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write('{"x": 1}\n{"x": 2}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"x": 3}]))
    (tmp_path / "c.txt").write_text("first line\n\nsecond line\n")
    assert dataio.read_records(f"file://{tmp_path}/a.jsonl.gz") == [{"x": 1}, {"x": 2}]
    assert dataio.read_records(str(tmp_path / "b.json")) == [{"x": 3}]
    assert dataio.read_records(str(tmp_path / "c.txt")) == [{"text": "first line"}, {"text": "second line"}]
    with pytest.raises(StageError, match=r"c.txt:1: invalid JSON line"):  # a declared format wins over the name
        dataio.read_records(str(tmp_path / "c.txt"), "jsonl")
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\nnot json\n')
    with pytest.raises(StageError, match=r"bad.jsonl:2: invalid JSON line"):
        dataio.read_records(str(tmp_path / "bad.jsonl"))
    with pytest.raises(StageError, match=r"set spec\.format"):
        dataio.format_of("data.bin")


def test_pvc_uri_maps_to_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEFORGE_PVC_ROOT", str(tmp_path))
    (tmp_path / "claim" / "d").mkdir(parents=True)
    (tmp_path / "claim" / "d" / "x.jsonl").write_text('{"text": "pvc"}\n')
    assert dataio.read_records("pvc://claim/d/*.jsonl") == [{"text": "pvc"}]


def test_hf_offline_and_s3_backend_errors() -> None:
    with pytest.raises(StageError, match=r"cannot load Hugging Face dataset 'org/none'.*pvc:// or s3://"):
        dataio.read_records("hf://org/none")
    if importlib.util.find_spec("s3fs") is None:
        with pytest.raises(StageError, match=r"pip install 'kubeforge\[s3\]'"):
            dataio.read_records("s3://bucket/key.jsonl")
    else:  # the backend resolves (no request is made until files are listed)
        fs, path = dataio._fs("s3://bucket/key.jsonl")
        assert path == "bucket/key.jsonl" and "s3" in fs.protocol


def test_prepare_to_remote_output(tmp_path: Path, memfs: fsspec.AbstractFileSystem) -> None:
    """An output URI without a local path: written to a staging dir, uploaded, digested."""
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": f"record number {i}"}) + "\n" for i in range(10)))
    ds = Dataset.model_validate({"metadata": {"name": "r", "namespace": "t"},
                                 "spec": {"source": {"uris": [str(src)]}, "task": "text"}})
    cfg = build_stage_config(ds, {}, "memory://store", metrics_port=None)
    cfg = cfg.model_copy(update={"progress_path": None, "result_path": None})
    result = prepare.run(cfg, ProgressReporter(cfg))
    assert result.artifact is not None and result.artifact.uri == "memory://store/t/dataset/r"
    names = sorted(p.rsplit("/", 1)[1] for p in memfs.ls("/store/t/dataset/r", detail=False))
    assert names == ["lineage.json", "stats.json", "test.parquet", "train.parquet", "validation.parquet"]
    assert len(dataio.read_split_records(cfg.output_uri, "all")) == 10
    assert len(dataio.read_split(cfg.output_uri, "train")) == 8
    lineage = json.loads(memfs.cat("/store/t/dataset/r/lineage.json"))
    assert lineage["artifact"]["uri"] == cfg.output_uri


def test_read_split_missing_and_empty_schema(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="split 'train' not found; the input must be the output directory"):
        dataio.read_split(str(tmp_path), "train")
    schema = dataio.schema_for([{"text": "a", "label": 1}], ["text", "label"])
    dataio.write_split(tmp_path, "test", [], schema)
    assert pq.read_schema(tmp_path / "test.parquet").names == ["text", "label"]


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("email", "mail john.doe+x@example.co.uk now", "mail [EMAIL] now"),
        ("phone", "call +1 415-555-0132 or (020) 7946 0958.", "call [PHONE] or [PHONE]."),
        ("key", "use sk-abcdefghijklmnopqrstuvwxyz123456 ok", "use [KEY] ok"),
        ("key", "AKIAIOSFODNN7EXAMPLE", "[KEY]"),
        ("key", "api_key=Zx81kdl39dk&x=1 password: hunter22", "api_key=[KEY]&x=1 password: [KEY]"),
        ("ip", "from 192.168.0.12 not 10.0.0.256", "from [IP] not 10.0.0.256"),
        ("ip", "v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "v6 [IP]"),
        ("credit-card", "4111 1111 1111 1111 / 4111-1111-1111-1112", "[CREDIT_CARD] / 4111-1111-1111-1112"),
        ("email", "version 1.2.3, year 2024, order 12345", "version 1.2.3, year 2024, order 12345"),
    ],
)
def test_pii_patterns(kind: str, text: str, expected: str) -> None:
    scrub, hits = prepare.pii_scrubber(Pii(enabled=True, kinds=[kind]))  # type: ignore[list-item]
    assert scrub(text) == expected
    assert hits[kind] == expected.count("[")


def test_pii_all_kinds_leave_plain_numbers() -> None:
    scrub, _ = prepare.pii_scrubber(
        Pii(enabled=True, kinds=["email", "phone", "key", "ip", "credit-card"], replacement="<{kind}>")
    )
    plain = "version 1.2.3, year 2024, 3 apples, order 12345"
    assert scrub(plain) == plain
    assert scrub("a@b.io 4111111111111111") == "<EMAIL> <CREDIT_CARD>"
