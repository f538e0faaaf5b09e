"""prepare: near-duplicate removal (loose LSH + exact Jaccard) and stratified splits with many small classes."""

from __future__ import annotations

import json
import math
import random
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubeforge.api.v1alpha1.dataset import DatasetSpec
from kubeforge_trainer import prepare

pytestmark = pytest.mark.ml

ROOT = Path(__file__).resolve().parents[2]


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def _with_jaccard_near(base: list[str], target: float, rng: random.Random, ngram: int = 5) -> str:
    """A variant of `base` whose shingle Jaccard similarity to it is just at/above `target`."""
    words = list(base)
    best = " ".join(words)
    for _ in range(len(words)):
        trial = list(words)
        trial[rng.randrange(len(trial))] = _words(rng, 1)[0]
        text = " ".join(trial)
        if prepare.jaccard(prepare.shingles(text, ngram), prepare.shingles(" ".join(base), ngram)) < target:
            return best
        words, best = trial, text
    return best


def test_near_duplicates_just_above_the_threshold_are_removed_and_below_kept() -> None:
    """Pairs at Jaccard 0.85-0.87 (an LSH tuned at 0.85 finds ~half of them) are all removed; 0.70-0.84 kept."""
    rng = random.Random(5)
    records: list[dict[str, Any]] = []
    above = below = 0
    for _ in range(120):
        base = _words(rng, 60)
        records.append({"text": " ".join(base)})
        if rng.random() < 0.5:
            variant = _with_jaccard_near(base, 0.85, rng)
            above += 1
        else:
            variant = _with_jaccard_near(base, rng.uniform(0.70, 0.80), rng)
            sim = prepare.jaccard(prepare.shingles(variant, 5), prepare.shingles(records[-1]["text"], 5))
            if sim >= 0.85:
                above += 1
            else:
                below += 1
        records.append({"text": variant})
    pipe = prepare.Pipeline(list(records))
    prepare._near_duplicates(pipe, 0.85, 128, 5)
    kept = {r["text"] for r in pipe.records}
    removed = [r for r in records if r["text"] not in kept]
    assert above >= 40 and below >= 40
    assert len(removed) == above, (len(removed), above)  # every pair >= 0.85 caught, nothing below dropped
    assert pipe.steps[-1]["rule"] == "nearDuplicate" and pipe.steps[-1]["removed"] == above


def test_lsh_bands_catch_pairs_at_the_threshold() -> None:
    for threshold in (0.5, 0.7, 0.85, 0.9, 0.99):
        for num_perm in (16, 128, 256):
            bands, rows = prepare.lsh_params(threshold, num_perm)
            assert bands * rows <= num_perm
            assert 1 - (1 - threshold**rows) ** bands >= prepare.LSH_RECALL_AT_THRESHOLD


def test_near_dedup_benchmark_meets_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "near_dedup.py"), "--docs", "300", "--variants", "300",
         "--json-out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    current = json.loads(out.read_text())["results"][0]
    assert current["rule"] == "current" and current["true_near_duplicates"] > 50
    assert current["recall"] >= 0.98 and current["distinct_dropped"] == 0 and current["precision"] == 1.0


def _spec(fractions: tuple[float, float, float], stratify: bool = True) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "task": "classification",
        "source": {"uris": ["x.jsonl"]},
        "split": {"train": fractions[0], "validation": fractions[1], "test": fractions[2], "stratify": stratify,
                  "seed": 1},
    })


@pytest.mark.parametrize(
    ("sizes", "fractions"),
    [
        ([3] * 100, (0.8, 0.1, 0.1)),  # per-class rounding put 0 records in validation and test
        ([1] * 50 + [2] * 30 + [7] * 5, (0.8, 0.1, 0.1)),
        ([2, 3, 4, 5, 6, 7, 8, 9, 10] * 7, (0.7, 0.2, 0.1)),
        ([1] * 40, (0.5, 0.25, 0.25)),  # singletons only: the ratios still hold
        ([60, 30], (0.6, 0.2, 0.2)),
    ],
    ids=["100x3", "mixed-small", "2-to-10", "singletons", "two-big"],
)
def test_stratified_split_keeps_global_ratios_within_one_record(
    sizes: list[int], fractions: tuple[float, float, float]
) -> None:
    records = [{"text": f"r{c}-{i}", "label": f"c{c:03d}"} for c, n in enumerate(sizes) for i in range(n)]
    out = prepare.split(records, _spec(fractions))
    n = len(records)
    for name, frac in zip(("train", "validation", "test"), fractions, strict=True):
        assert abs(len(out[name]) - n * frac) <= 1, (name, len(out[name]), n * frac)
    assert sorted(r["text"] for rs in out.values() for r in rs) == sorted(r["text"] for r in records)
    by_class = {split: Counter(r["label"] for r in rs) for split, rs in out.items()}
    for c, size in enumerate(sizes):
        label = f"c{c:03d}"
        for split, frac in zip(("validation", "test"), fractions[1:], strict=True):
            got = by_class[split][label]
            assert got <= math.ceil(size * frac) + (1 if size * frac < 1 else 0), (label, split, got)
        if size >= 2 and sum(sizes) * fractions[0] >= len(sizes):
            assert by_class["train"][label] >= 1, label  # every class with 2+ records is trained on
    assert prepare.split(records, _spec(fractions)) == out  # deterministic


def test_unstratified_split_counts_are_unchanged() -> None:
    for n in range(1, 80):
        for fractions in ((0.8, 0.1, 0.1), (0.9, 0.05, 0.05), (0.5, 0.0, 0.5)):
            assert prepare._stratified_counts([n], fractions) == [prepare._counts(n, fractions)]
