"""Calibration text from a Dataset artifact (a directory of `<split>.parquet` files)."""

from __future__ import annotations

from pathlib import Path

from . import ServingError

SPLITS = ("train", "validation", "test")


def load_texts(dataset_dir: str | Path, split: str = "train", limit: int | None = None) -> list[str]:
    """Texts of one split: column `text`, or `prompt`+`completion`, or `prompt`+`chosen`.

    Why: int8-static calibration needs inputs that look like serving traffic, and every Kubeforge
    Dataset stores one of these three layouts.
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
    cols = set(table.column_names)
    n = table.num_rows if limit is None else min(limit, table.num_rows)
    table = table.slice(0, n)
    if "text" in cols:
        texts = [str(t) for t in table.column("text").to_pylist()]
    elif {"prompt", "completion"} <= cols:
        texts = [
            f"{p}{c}"
            for p, c in zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist(), strict=True)
        ]
    elif {"prompt", "chosen"} <= cols:
        texts = [
            f"{p}{c}"
            for p, c in zip(table.column("prompt").to_pylist(), table.column("chosen").to_pylist(), strict=True)
        ]
    else:
        raise ServingError(
            f"{path} has columns {sorted(cols)}; calibration needs `text`, `prompt`+`completion` or `prompt`+`chosen`",
            reason="CalibrationDataInvalid",
        )
    texts = [t for t in texts if t]
    if not texts:
        raise ServingError(f"{path} has no non-empty calibration texts", reason="CalibrationDataInvalid")
    return texts
