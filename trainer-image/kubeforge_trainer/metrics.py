"""Evaluation metrics as pure functions over predictions and references.

Each metric delegates to its reference implementation (scikit-learn, sacrebleu, nltk, rouge-score)
so numbers match what users compute elsewhere; tests/unit/test_metrics.py checks parity. Scales:
BLEU is sacrebleu's 0-100; ROUGE and exact match are 0-1 averages over samples; NIST is nltk's
corpus NIST (n=5); perplexity is exp(mean token negative log-likelihood).

Options (spec.metricOptions): BLEU with sacrebleu's effective order and tokenizer; ROUGE through a
Unicode tokenizer (rouge-score's own keeps only [a-z0-9], so Chinese scores 0) that equals rouge-score's
on ASCII text; exact match ignoring case, punctuation and articles (SQuAD) and the lm-evaluation-harness
`regexes_to_ignore`; GSM8K strict/flexible answer extraction exactly as the harness's regex filters.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubeforge.api.v1alpha1.evaluation import MetricOptions

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


def bleu(
    preds: Sequence[str], refs: Sequence[str], effective_order: bool = False, tokenize: str = "13a"
) -> float:
    """Corpus BLEU (sacrebleu: exp smoothing, `tokenize` tokenisation, optional effective order), 0-100.

    With `effective_order`, n-gram orders that no prediction is long enough to contain are left out of
    the geometric mean (sacrebleu's `use_effective_order`), so short answers are not scored 0.
    """
    import sacrebleu

    _check(preds, refs)
    return float(
        sacrebleu.corpus_bleu(list(preds), [list(refs)], tokenize=tokenize, use_effective_order=effective_order).score
    )


@lru_cache(maxsize=8)
def _sacrebleu_tokenizer(name: str) -> Any:
    from sacrebleu.metrics.bleu import BLEU

    return BLEU(tokenize=name).tokenizer


def tokenize(text: str, name: str = "13a") -> list[str]:
    """Word tokens as BLEU sees them (sacrebleu's `name` tokenizer, 13a by default), used for NIST too."""
    return list(_sacrebleu_tokenizer(name)(text.strip()).split())


def nist(preds: Sequence[str], refs: Sequence[str], n: int = NIST_ORDER, tokenizer: str = "13a") -> float:
    """Corpus NIST (nltk `corpus_nist`) over 13a tokens.

    nltk divides by the corpus' count of hypothesis n-grams per order and fails when an order has
    none (all predictions shorter than n tokens). Such an order contributes 0, the rule nltk applies
    per sentence; that equals nltk's score at the highest order that has n-grams, which is what is
    computed (and 0 when every prediction is empty).
    """
    from nltk.translate.nist_score import corpus_nist

    _check(preds, refs)
    hyps = [tokenize(p, tokenizer) for p in preds]
    order = min(n, max(len(h) for h in hyps))
    if order == 0:
        return 0.0
    return float(corpus_nist([[tokenize(r, tokenizer)] for r in refs], hyps, n=order))


def _is_cjk(ch: str) -> bool:
    """Scripts written without spaces between words, scored per character: Han, kana, and their marks."""
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= o <= 0x4DBF  # extension A
        or 0x20000 <= o <= 0x3134F  # extensions B-H
        or 0xF900 <= o <= 0xFAFF  # compatibility ideographs
        or 0x3040 <= o <= 0x30FF  # hiragana, katakana
        or 0x31F0 <= o <= 0x31FF  # katakana phonetic extensions
        or 0xFF66 <= o <= 0xFF9D  # half-width katakana
        or 0x3005 <= o <= 0x3007  # iteration mark, closing mark, ideographic zero
    )


class UnicodeTokenizer:
    """rouge-score `Tokenizer` that keeps every script: on ASCII text it equals rouge-score's default.

    Lower-cases; a token is a run of letters, digits and combining marks (any script; `_` and
    punctuation separate, as in rouge-score); each CJK ideograph or kana is a token of its own (the
    usual character-level ROUGE for Chinese and Japanese). With `use_stemmer`, ASCII words longer than
    3 characters are Porter-stemmed exactly as rouge-score does.
    """

    def __init__(self, use_stemmer: bool = True) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text`."""
        tokens: list[str] = []
        word: list[str] = []
        for ch in text.lower():
            if _is_cjk(ch):
                if word:
                    tokens.append("".join(word))
                    word = []
                tokens.append(ch)
            elif unicodedata.category(ch)[0] in "LNM":
                word.append(ch)
            elif word:
                tokens.append("".join(word))
                word = []
        if word:
            tokens.append("".join(word))
        if self._stemmer is not None:
            tokens = [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]
        return tokens


@lru_cache(maxsize=4)
def _rouge_scorer(tokenizer: str = "unicode", use_stemmer: bool = True) -> Any:
    from rouge_score import rouge_scorer

    if tokenizer == "rouge-score":
        return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    if tokenizer != "unicode":
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; use unicode or rouge-score")
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeTokenizer(use_stemmer))


def rouge_per_sample(pred: str, ref: str, tokenizer: str = "unicode", use_stemmer: bool = True) -> dict[str, float]:
    """ROUGE-1/2/L F-measure of one prediction (rouge-score; Porter stemming; Unicode tokens by default)."""
    scores = _rouge_scorer(tokenizer, use_stemmer).score(ref, pred)
    return {k: float(scores[k].fmeasure) for k in ROUGE_TYPES}


def rouge(
    preds: Sequence[str], refs: Sequence[str], tokenizer: str = "unicode", use_stemmer: bool = True
) -> dict[str, float]:
    """ROUGE-1/2/L F-measure averaged over samples."""
    _check(preds, refs)
    per = [rouge_per_sample(p, r, tokenizer, use_stemmer) for p, r in zip(preds, refs, strict=True)]
    return {k: math.fsum(s[k] for s in per) / len(per) for k in ROUGE_TYPES}


_WS = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_answer(
    text: str,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_articles: bool = False,
    regexes_to_ignore: Sequence[str] = (),
) -> str:
    """What exact match compares: regexes deleted, then case, punctuation, articles; whitespace collapsed.

    The order is the lm-evaluation-harness's (regexes, case, punctuation); with case, punctuation and
    articles all ignored this is SQuAD's `normalize_answer`.
    """
    for pattern in regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT_TABLE)
    if ignore_articles:
        text = _ARTICLES.sub(" ", text)
    return _WS.sub(" ", text).strip()


def exact_match(
    preds: Sequence[str],
    refs: Sequence[str],
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_articles: bool = False,
    regexes_to_ignore: Sequence[str] = (),
) -> float:
    """Share of predictions equal to their reference after `normalize_answer` with the given options."""
    _check(preds, refs)
    opts = (ignore_case, ignore_punctuation, ignore_articles, tuple(regexes_to_ignore))
    hits = sum(normalize_answer(p, *opts) == normalize_answer(r, *opts) for p, r in zip(preds, refs, strict=True))
    return hits / len(preds)


def contains(
    preds: Sequence[str],
    refs: Sequence[str],
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_articles: bool = False,
    regexes_to_ignore: Sequence[str] = (),
) -> float:
    """Share of predictions that contain their whole reference as a run of words, both normalised as for
    `exact_match` (an empty reference only matches an empty prediction)."""
    _check(preds, refs)
    opts: dict[str, Any] = {
        "ignore_case": ignore_case,
        "ignore_punctuation": ignore_punctuation,
        "ignore_articles": ignore_articles,
        "regexes_to_ignore": tuple(regexes_to_ignore),
    }
    return sum(contains_one(p, r, **opts) for p, r in zip(preds, refs, strict=True)) / len(preds)


def contains_one(pred: str, ref: str, **opts: Any) -> bool:
    """Whether one prediction contains its reference (see `contains`); `opts` as for `normalize_answer`."""
    p, r = normalize_answer(pred, **opts), normalize_answer(ref, **opts)
    return p == r if not r else f" {r} " in f" {p} "


def exact_match_options(options: MetricOptions | None) -> dict[str, Any]:
    """spec.metricOptions.exactMatch as keyword arguments of `exact_match`/`normalize_answer`."""
    if options is None:
        return {}
    em = options.exact_match
    return {
        "ignore_case": em.ignore_case,
        "ignore_punctuation": em.ignore_punctuation,
        "ignore_articles": em.ignore_articles,
        "regexes_to_ignore": tuple(em.regexes_to_ignore or ()),
    }


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total negative log-likelihood / number of predicted tokens)."""
    if n_tokens <= 0:
        raise ValueError("no tokens to score")
    return math.exp(total_nll / n_tokens)


def generation(
    preds: Sequence[str], refs: Sequence[str], wanted: Sequence[str], options: MetricOptions | None = None
) -> dict[str, float]:
    """The requested generation metrics (only those asked for are computed), with spec.metricOptions."""
    out: dict[str, float] = {}
    b = options.bleu if options is not None else None
    r = options.rouge if options is not None else None
    if "bleu" in wanted:
        out["bleu"] = bleu(preds, refs, b.effective_order, b.tokenize) if b else bleu(preds, refs)
    if "nist" in wanted:
        out["nist"] = nist(preds, refs, tokenizer=b.tokenize) if b else nist(preds, refs)
    if any(k in wanted for k in ROUGE_TYPES):
        scores = rouge(preds, refs, r.tokenizer, r.use_stemmer) if r else rouge(preds, refs)
        out.update({k: v for k, v in scores.items() if k in wanted})
    if "exact_match" in wanted:
        out["exact_match"] = exact_match(preds, refs, **exact_match_options(options))
    if "contains" in wanted:
        out["contains"] = contains(preds, refs, **exact_match_options(options))
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


# ------------------------------------------------------------- lm-evaluation-harness GSM8K conventions

# The harness's gsm8k filters ("strict-match", "flexible-extract") and gsm8k_cot's strict pattern.
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
GSM8K_COT_STRICT = r"The answer is (\-?[0-9\.\,]+)."
GSM8K_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
# The harness's gsm8k exact_match: these regexes removed from both sides, case ignored.
GSM8K_IGNORE = (",", r"\$", "(?s).*#### ", r"\.$")
INVALID = "[invalid]"


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = INVALID) -> str:
    """The harness's `regex` filter: the `group_select`-th match (its first non-empty group), stripped."""
    found = re.findall(pattern, text)
    if not found:
        return fallback
    match = found[group_select]
    if isinstance(match, tuple):
        parts = [m for m in match if m]
        if not parts:
            return fallback
        match = parts[0]
    return str(match).strip()


def gsm8k_match(extracted: str, answer: str) -> bool:
    """The harness's gsm8k exact_match of one extracted answer against the full reference answer."""
    def norm(s: str) -> str:
        for pattern in GSM8K_IGNORE:
            s = re.sub(pattern, "", s)
        return s.lower()

    return norm(extracted) == norm(answer)
