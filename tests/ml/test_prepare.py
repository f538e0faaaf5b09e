"""The prepare stage end to end on small generated data: every task, every rule, determinism, errors."""

from __future__ import annotations

import json
import os
import random
import re
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from kubeforge.api.v1alpha1.dataset import Dataset, DatasetStatus
from kubeforge.stage import ResolvedInput, StageConfig, StageResult, build_stage_config
from kubeforge_trainer import dataio, prepare
from kubeforge_trainer.runtime import ProgressReporter, StageError


def make_config(
    tmp_path: Path, spec: dict[str, Any], name: str = "ds", inputs: dict[str, ResolvedInput] | None = None
) -> StageConfig:
    """A StageConfig rendered by the same function the operator uses."""
    ds = Dataset.model_validate({"metadata": {"name": name, "namespace": "t"}, "spec": spec})
    return build_stage_config(ds, inputs or {}, f"file://{tmp_path}/store", metrics_port=None)


def run(config: StageConfig) -> StageResult:
    return prepare.run(config, ProgressReporter(config))


def out_dir(config: StageConfig) -> Path:
    return Path(config.output_uri.removeprefix("file://"))


def splits_of(config: StageConfig) -> dict[str, list[dict[str, Any]]]:
    return {s: pq.read_table(out_dir(config) / f"{s}.parquet").to_pylist() for s in dataio.SPLITS}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentence(i: int, n: int = 8) -> str:
    """Distinct, deterministic sentences of random lower-case words (no two are near duplicates)."""
    rng = random.Random(i)
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7))) for _ in range(n))


# --------------------------------------------------------------------------------- every task


def test_text_task_every_rule_counts(tmp_path: Path) -> None:
    rows = [{"body": sentence(i)} for i in range(40)]
    rows += [{"body": "tiny"}] * 1 + [{"body": "x" * 500}]  # minLength, maxLength
    rows += [{"body": sentence(100) + " FORBIDDEN"}]  # excludeRegex
    rows += [{"body": "  " + sentence(3).upper().replace(" ", "   ") + " "}]  # exact dup after normalisation
    rows += [{"body": sentence(4) + "!"}]  # near duplicate of row 4
    rows += [{"body": None}]  # missing value
    rows += [{"body": "contact " + sentence(55) + " at bob@example.com"}]  # PII, kept
    src = write_jsonl(tmp_path / "raw" / "part-0.jsonl", rows)
    spec = {
        "source": {"uris": [f"file://{src.parent}/*.jsonl"]},
        "task": "text",
        "columns": {"text": "body"},
        "processing": {
            "normalize": {"lowercase": True},
            "pii": {"enabled": True, "kinds": ["email"], "replacement": "<{kind}>"},
            "filters": {"minLength": 10, "maxLength": 300, "excludeRegex": ["forbidden"]},
            "dedup": {"exact": True, "near": {"enabled": True, "threshold": 0.7, "numPerm": 128, "ngram": 5}},
        },
        "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 1},
    }
    cfg = make_config(tmp_path, spec)
    result = run(cfg)
    assert result.succeeded
    d = result.details or {}
    assert d["removed"] == {
        "missingValues": 1,
        "normalize": 0,
        "pii": 0,
        "minLength": 1,
        "maxLength": 1,
        "excludeRegex": 1,
        "exactDuplicate": 1,
        "nearDuplicate": 1,
    }
    kept = 41  # 40 sentences + the PII one
    assert d["counts"] == {"input": 47, "train": 33, "validation": 4, "test": 4}
    assert sum(d["counts"][s] for s in dataio.SPLITS) == kept
    allrows = [r for rs in splits_of(cfg).values() for r in rs]
    assert set(allrows[0]) == {"text"}
    texts = [r["text"] for r in allrows]
    assert all(t.replace("<EMAIL>", "") == t.lower().replace("<email>", "") and "  " not in t for t in texts)
    assert any("<EMAIL>" in t for t in texts) and not any("@example.com" in t for t in texts)
    stats = json.loads((out_dir(cfg) / "stats.json").read_text())
    assert stats["pii"] == {"email": 1}
    assert [s["rule"] for s in stats["steps"]][:3] == ["missingValues", "normalize", "pii"]
    assert stats["statistics"]["length"]["min"] >= 10 and stats["statistics"]["length"]["max"] <= 300
    assert d["statistics"]["length.p50"] <= d["statistics"]["length.p95"] <= d["statistics"]["length.max"]
    assert d["digest"].startswith("sha256:") and d["artifactUri"] == cfg.output_uri
    status = DatasetStatus.model_validate(d)  # details are DatasetStatus fields, camelCase
    assert status.counts is not None and status.counts.train == 33 and status.artifact_uri == cfg.output_uri
    assert result.artifact is not None and result.artifact.digest and result.artifact.size_bytes
    lineage = json.loads((out_dir(cfg) / "lineage.json").read_text())
    assert lineage["producer"]["kind"] == "Dataset" and lineage["artifact"]["digest"] == result.artifact.digest


def test_instruction_csv_and_include_regex(tmp_path: Path) -> None:
    src = tmp_path / "raw.csv"
    lines = ["question,answer"] + [f"Q{i} {sentence(i, 3)},A{i} keep" for i in range(10)]
    lines += [f"Q{i} {sentence(i, 3)},A{i} drop" for i in range(10, 15)]
    src.write_text("\n".join(lines) + "\n")
    spec = {
        "source": {"uris": [str(src)]},
        "task": "instruction",
        "columns": {"prompt": "question", "completion": "answer"},
        "processing": {"filters": {"includeRegex": ["keep$"]}},
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
    }
    cfg = make_config(tmp_path, spec)
    d = run(cfg).details or {}
    assert d["removed"]["includeRegex"] == 5
    assert d["counts"] == {"input": 15, "train": 6, "validation": 2, "test": 2}
    rows = splits_of(cfg)["train"]
    assert set(rows[0]) == {"prompt", "completion"} and all(r["completion"].endswith("keep") for r in rows)


def test_chat_template_renders_text(tmp_path: Path) -> None:
    rows = [
        {"conv": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": sentence(i, 4)}]}
        for i in range(10)
    ]
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    spec = {
        "source": {"uris": [str(src)]},
        "task": "chat",
        "columns": {"messages": "conv"},
        "processing": {"chatTemplate": template},
    }
    cfg = make_config(tmp_path, spec)
    assert run(cfg).succeeded
    allrows = [r for rs in splits_of(cfg).values() for r in rs]
    assert len(allrows) == 10
    r = allrows[0]
    assert r["messages"][0]["role"] == "user"
    assert r["text"] == f"<|user|>{r['messages'][0]['content']}\n<|assistant|>{r['messages'][1]['content']}\n"
    # the training helper reads the same split through dataio as a datasets.Dataset
    ds = dataio.read_split(cfg.output_uri, "train")
    assert ds.column_names == ["messages", "text"] and len(ds) == 8


def test_preference_parquet_and_from_dataset(tmp_path: Path) -> None:
    import pyarrow as pa

    rows = [{"prompt": f"p{i} {sentence(i, 3)}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    src = tmp_path / "pref.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    parent = make_config(tmp_path, {"source": {"uris": [str(src)]}, "task": "preference"}, name="parent")
    assert run(parent).succeeded
    # child: derived from the parent's train split, with a filter
    child_spec = {
        "source": {"fromDataset": {"name": "parent", "split": "train"}},
        "task": "preference",
        "processing": {"filters": {"excludeRegex": ["good 1\\b"]}},
    }
    inputs = {"parentDataset": ResolvedInput(kind="Dataset", name="parent", uri=parent.output_uri, digest="x")}
    child = make_config(tmp_path, child_spec, name="child", inputs=inputs)
    result = run(child)
    d = result.details or {}
    assert d["counts"]["input"] == 16
    expected = sum(bool(re.search(r"good 1\b", r["chosen"])) for r in splits_of(parent)["train"])
    assert d["removed"]["excludeRegex"] == expected
    assert [e.name for e in result.lineage or []] == ["parent"]


def test_classification_label_map_and_stratify(tmp_path: Path) -> None:
    rows = [{"text": sentence(i), "label": "pos"} for i in range(60)]
    rows += [{"text": sentence(i), "label": "neg"} for i in range(60, 90)]
    rows += [{"text": sentence(i), "label": "spam"} for i in range(90, 100)]
    src = write_jsonl(tmp_path / "cls.jsonl", rows)
    spec = {
        "source": {"uris": [str(src)]},
        "task": "classification",
        "processing": {"labelMap": {"pos": "positive", "neg": "negative", "spam": "__drop__"}},
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "stratify": True, "seed": 3},
    }
    cfg = make_config(tmp_path, spec)
    d = run(cfg).details or {}
    assert d["removed"]["labelMap"] == 10
    assert d["statistics"]["label.positive"] == pytest.approx(60 / 90)
    for name, rs in splits_of(cfg).items():
        c = Counter(r["label"] for r in rs)
        assert set(c) == {"positive", "negative"}
        assert c["positive"] == 2 * c["negative"], (name, c)  # 2:1 kept in every split
    assert d["counts"] == {"input": 100, "train": 54, "validation": 18, "test": 18}


def test_regression_outliers(tmp_path: Path) -> None:
    rows = [{"text": sentence(i), "score": str(1.0 + (i % 5) * 0.1)} for i in range(30)]
    rows += [{"text": sentence(200), "score": "1000"}, {"text": sentence(201), "score": "-999"}]
    src = write_jsonl(tmp_path / "reg.jsonl", rows)
    for method, k in (("zscore", 3.0), ("iqr", 1.5)):
        spec = {
            "source": {"uris": [str(src)]},
            "task": "regression",
            "columns": {"value": "score"},
            "processing": {"outliers": {"method": method, "threshold": k}},
        }
        cfg = make_config(tmp_path, spec, name=f"reg-{method}")
        d = run(cfg).details or {}
        assert d["removed"]["outliers"] == 2, method
        values = [r["value"] for rs in splits_of(cfg).values() for r in rs]
        assert max(values) < 2 and isinstance(values[0], float)


def test_text_format_and_max_records(tmp_path: Path) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(sentence(i) for i in range(50)) + "\n\n")
    cfg = make_config(tmp_path, {"source": {"uris": [f"file://{src}"]}, "task": "text", "maxRecords": 20})
    d = run(cfg).details or {}
    assert d["counts"]["input"] == 20 and sum(d["counts"][s] for s in dataio.SPLITS) == 20


# ------------------------------------------------------------------------------ determinism


def test_deterministic_digest_and_seed(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": sentence(i)} for i in range(30)])
    spec: dict[str, Any] = {"source": {"uris": [str(src)]}, "task": "text", "split": {"seed": 7}}
    a = run(make_config(tmp_path, spec, name="a"))
    b = run(make_config(tmp_path, spec, name="b"))
    spec["split"]["seed"] = 8
    c_cfg = make_config(tmp_path, spec, name="c")
    c = run(c_cfg)
    assert a.details and b.details and c.details
    assert a.details["digest"] == b.details["digest"]
    assert a.artifact and b.artifact and a.artifact.digest == b.artifact.digest  # byte-identical files
    assert c.details["digest"] != a.details["digest"]
    assert a.details["counts"] == c.details["counts"]
    a_train = {r["text"] for r in splits_of(make_config(tmp_path, {**spec, "split": {"seed": 7}}, name="a"))["train"]}
    assert a_train != {r["text"] for r in splits_of(c_cfg)["train"]}


# ---------------------------------------------------------------------------------- errors


def test_empty_train_explains_rules(tmp_path: Path) -> None:
    rows = [{"text": "tiny"}, {"text": "medium one"}, {"text": "medium one"}, {"text": sentence(1)}]
    src = write_jsonl(tmp_path / "e.jsonl", rows)
    filters = {"minLength": 5, "maxLength": 12, "excludeRegex": ["one"]}
    spec = {"source": {"uris": [str(src)]}, "task": "text", "processing": {"filters": filters}}
    with pytest.raises(StageError) as err:
        run(make_config(tmp_path, spec))
    msg = str(err.value)
    assert "minLength removed 1, maxLength removed 1, excludeRegex removed 2" in msg and "read 4" in msg
    assert "\n" not in msg


def test_bad_regex_names_field(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "r.jsonl", [{"text": sentence(1)}])
    spec = {"source": {"uris": [str(src)]}, "task": "text", "processing": {"filters": {"includeRegex": ["ok", "("]}}}
    with pytest.raises(StageError, match=r"spec\.processing\.filters\.includeRegex\[1\]"):
        run(make_config(tmp_path, spec))


def test_missing_column_via_cli(tmp_path: Path) -> None:
    """The container entrypoint: exit 1, result.json succeeded=false, a one-line message naming the column."""
    src = write_jsonl(tmp_path / "c.jsonl", [{"body": sentence(i), "y": i % 2} for i in range(10)])
    cfg = make_config(tmp_path, {"source": {"uris": [str(src)]}, "task": "classification", "columns": {"text": "body"}})
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(cfg.dump())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KUBEFORGE_TERMINATION_LOG": str(tmp_path / "termination")}
    proc = subprocess.run(
        [sys.executable, "-m", "kubeforge_trainer", "prepare", "--config", str(cfg_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    result = json.loads(Path(str(cfg.result_path).removeprefix("file://")).read_text())
    assert result["succeeded"] is False and result["reason"] == "MissingColumn"
    msg = result["message"]
    assert "'label'" in msg and "spec.columns.label" in msg and "['body', 'y']" in msg and "\n" not in msg
    assert json.loads((tmp_path / "termination").read_text())["message"] == msg
    assert proc.stderr.strip().splitlines()[-1] == f"error: {msg}"


def test_missing_source(tmp_path: Path) -> None:
    spec = {"source": {"uris": [f"file://{tmp_path}/nothing/*.jsonl"]}, "task": "text"}
    with pytest.raises(StageError, match="matched no data files"):
        run(make_config(tmp_path, spec))
