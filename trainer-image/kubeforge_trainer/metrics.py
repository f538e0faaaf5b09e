"""Evaluation metrics as pure functions over predictions and references.

Each metric delegates to its reference implementation (scikit-learn, sacrebleu, nltk, rouge-score)
so numbers match what users compute elsewhere; tests/unit/test_metrics.py checks parity. Scales:
BLEU is sacrebleu's 0-100; ROUGE and exact match are 0-1 averages over samples; NIST is nltk's
corpus NIST (n=5); perplexity is exp(mean token negative log-likelihood).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

Label = int | str

CLASSIFICATION = ("accuracy", "precision", "recall", "f1")
REGRESSION = ("mse", "rmse", "mae")
GENERATION = ("bleu", "nist", "rouge1", "rouge2", "rougeL", "exact_match")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
NIST_ORDER = 5


def _check(preds: Sequence[Any], refs: Sequence[Any]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no samples to score")


def accuracy(y_true: Sequence[Label], y_pred: Sequence[Label]) -> float:
    """Share of exact label matches (sklearn accuracy_score)."""
    from sklearn.metrics import accuracy_score

    _check(y_pred, y_true)
    return float(accuracy_score(y_true, y_pred))


def precision_recall_f1(
    y_true: Sequence[Label], y_pred: Sequence[Label], average: str = "macro", pos_label: Label = 1
) -> dict[str, float]:
    """Precision, recall and F1 with sklearn's averaging (`macro`, `micro`, `weighted`, `binary`).

    Undefined ratios (a class never predicted) count as 0, sklearn's `zero_division=0`.
    """
    from sklearn.metrics import precision_recall_fscore_support

    _check(y_pred, y_true)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, average=average, pos_label=pos_label, zero_division=0
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def classification(
    y_true: Sequence[Label], y_pred: Sequence[Label], average: str = "macro", pos_label: Label = 1
) -> dict[str, float]:
    """accuracy, precision, recall, f1."""
    return {"accuracy": accuracy(y_true, y_pred), **precision_recall_f1(y_true, y_pred, average, pos_label)}


def regression(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """mse, rmse, mae (sklearn)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, root_mean_squared_error

    _check(y_pred, y_true)
    return {
        "mse": float(mean_squared_error(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
    }


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exp smoothing), 0-100."""
    import sacrebleu

    _check(preds, refs)
    return float(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)


@lru_cache(maxsize=1)
def _tokenizer_13a() -> Any:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()  # type: ignore[no-untyped-call]


def tokenize(text: str) -> list[str]:
    """Word tokens as BLEU sees them (sacrebleu 13a), used for NIST too."""
    return list(_tokenizer_13a()(text.strip()).split())


def nist(preds: Sequence[str], refs: Sequence[str], n: int = NIST_ORDER) -> float:
    """Corpus NIST (nltk `corpus_nist`) over 13a tokens.

    nltk divides by the corpus' count of hypothesis n-grams per order and fails when an order has
    none (all predictions shorter than n tokens). Such an order contributes 0, the rule nltk applies
    per sentence; that equals nltk's score at the highest order that has n-grams, which is what is
    computed (and 0 when every prediction is empty).
    """
    from nltk.translate.nist_score import corpus_nist

    _check(preds, refs)
    hyps = [tokenize(p) for p in preds]
    order = min(n, max(len(h) for h in hyps))
    if order == 0:
        return 0.0
    return float(corpus_nist([[tokenize(r)] for r in refs], hyps, n=order))


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_sample(pred: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure of one prediction (rouge-score, Porter stemming)."""
    scores = _rouge_scorer().score(ref, pred)
    return {k: float(scores[k].fmeasure) for k in ROUGE_TYPES}


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure averaged over samples."""
    _check(preds, refs)
    per = [rouge_per_sample(p, r) for p, r in zip(preds, refs, strict=True)]
    return {k: math.fsum(s[k] for s in per) / len(per) for k in ROUGE_TYPES}


_WS = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Whitespace-collapsed, stripped text: what exact match compares."""
    return _WS.sub(" ", text).strip()


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Share of predictions equal to their reference after whitespace normalisation."""
    _check(preds, refs)
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(preds, refs, strict=True)) / len(preds)


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total negative log-likelihood / number of predicted tokens)."""
    if n_tokens <= 0:
        raise ValueError("no tokens to score")
    return math.exp(total_nll / n_tokens)


def generation(preds: Sequence[str], refs: Sequence[str], wanted: Sequence[str]) -> dict[str, float]:
    """The requested generation metrics (only those asked for are computed)."""
    out: dict[str, float] = {}
    if "bleu" in wanted:
        out["bleu"] = bleu(preds, refs)
    if "nist" in wanted:
        out["nist"] = nist(preds, refs)
    if any(k in wanted for k in ROUGE_TYPES):
        out.update({k: v for k, v in rouge(preds, refs).items() if k in wanted})
    if "exact_match" in wanted:
        out["exact_match"] = exact_match(preds, refs)
    return out


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_number(text: str) -> str | None:
    """The last number in a text (GSM8K convention), commas and a trailing `.0` removed."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = str(found[-1]).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".") or "0"
    return value


def reference_number(answer: str) -> str | None:
    """The gold number of a GSM8K answer: after `####`, else the last number."""
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return extract_number(answer)


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two extracted numbers (None never matches)."""
    if a is None or b is None:
        return False
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-6)
    except ValueError:
        return False
