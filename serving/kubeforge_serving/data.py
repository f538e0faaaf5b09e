"""Text from a Dataset artifact (a directory of `<split>.parquet` files): calibration and held-out parity text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ServingError

SPLITS = ("train", "validation", "test")
HELD_OUT_SPLITS = ("test", "validation")


def _pairs(table: Any, a: str, b: str, sep: str = "") -> list[str]:
    return [f"{x}{sep}{y}" for x, y in zip(table.column(a).to_pylist(), table.column(b).to_pylist(), strict=True)]


def _chat(messages: Any) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages or [] if isinstance(m, dict))


def table_texts(table: Any) -> list[str] | None:
    """One text per record for every Kubeforge Dataset layout, or None for unknown columns.

    `text`; `prompt`+`completion`; `prompt`+`chosen`; `question`+`answer` (the answer is an index for
    multiple-choice, so the question and its choices); `messages` (chat turns joined).
    """
    cols = set(table.column_names)
    if "text" in cols:
        return [str(t) for t in table.column("text").to_pylist()]
    if {"prompt", "completion"} <= cols:
        return _pairs(table, "prompt", "completion")
    if {"prompt", "chosen"} <= cols:
        return _pairs(table, "prompt", "chosen")
    if {"question", "choices"} <= cols:
        rows = zip(table.column("question").to_pylist(), table.column("choices").to_pylist(), strict=True)
        return [f"{q}\n" + "\n".join(str(c) for c in (ch or [])) for q, ch in rows]
    if {"question", "answer"} <= cols:
        return _pairs(table, "question", "answer", "\n")
    if "messages" in cols:
        return [_chat(m) for m in table.column("messages").to_pylist()]
    return None


def load_texts(dataset_dir: str | Path, split: str = "train", limit: int | None = None) -> list[str]:
    """Texts of one split (see `table_texts` for the layouts).

    Why: int8-static calibration needs inputs that look like serving traffic, and every Kubeforge
    Dataset stores one of these layouts.
    """
    import pyarrow.parquet as pq

    root = Path(dataset_dir)
    path = root / f"{split}.parquet"
    if not path.is_file():
        have = sorted(p.name for p in root.glob("*.parquet")) if root.is_dir() else []
        raise ServingError(
            f"calibration split {split!r} not found at {path} (have {have or 'nothing'}); "
            "set spec.quantization.calibration.split to an existing split",
            reason="CalibrationDataMissing",
        )
    table = pq.read_table(path)
    n = table.num_rows if limit is None else min(limit, table.num_rows)
    texts = table_texts(table.slice(0, n))
    if texts is None:
        raise ServingError(
            f"{path} has columns {sorted(table.column_names)}; calibration needs `text`, `prompt`+`completion`, "
            "`prompt`+`chosen`, `question`+`answer`/`choices` or `messages`",
            reason="CalibrationDataInvalid",
        )
    texts = [t for t in texts if t]
    if not texts:
        raise ServingError(f"{path} has no non-empty calibration texts", reason="CalibrationDataInvalid")
    return texts


def load_held_out(dataset_dir: str | Path, split: str | None = None, limit: int = 64) -> tuple[list[str], str]:
    """(texts, split) of a held-out split: `split` first, then `test`, then `validation`; never `train`.

    Raises ServingError (reason HeldOutDataMissing) saying what was looked for, so the caller can fall back.
    """
    root = Path(dataset_dir)
    tried = list(dict.fromkeys([split] if split else []) | dict.fromkeys(HELD_OUT_SPLITS))
    problems = []
    for name in tried:
        if not (root / f"{name}.parquet").is_file():
            problems.append(f"no {name} split")
            continue
        try:
            return load_texts(root, name, limit), name
        except ServingError as exc:
            problems.append(str(exc).split(";")[0].replace("calibration", "held-out"))
    raise ServingError(f"{root}: {'; '.join(problems)}", reason="HeldOutDataMissing")
