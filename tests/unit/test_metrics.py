"""Metric parity with the reference libraries (to 1e-6), plus hand-computed cases that can fail."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from kubeforge_trainer import metrics
from nltk.translate.nist_score import corpus_nist
from rouge_score import rouge_scorer
from sklearn import metrics as skm

TOL = 1e-6

Y_TRUE = [0, 1, 2, 2, 1, 0, 1, 2, 0, 0]
Y_PRED = [0, 2, 2, 2, 1, 0, 0, 1, 0, 1]
PREDS = [
    "the cat sat on the mat today",
    "a quick brown fox jumps over the lazy dog",
    "",
    "it is raining cats and dogs in the city of london",
    "hello world",
]
REFS = [
    "the cat is sitting on the mat today",
    "the quick brown fox jumped over the lazy dog",
    "nothing was said",
    "it is raining cats and dogs in london",
    "hello world",
]


# ------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_classification_parity(average: str) -> None:
    got = metrics.classification(Y_TRUE, Y_PRED, average)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED), abs=TOL)
    assert got["precision"] == pytest.approx(skm.precision_score(Y_TRUE, Y_PRED, average=average), abs=TOL)
    assert got["recall"] == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED, average=average), abs=TOL)
    assert got["f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average=average), abs=TOL)


def test_binary_and_single_class_parity() -> None:
    yt, yp = [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]
    got = metrics.classification(yt, yp, "binary")
    assert got["f1"] == pytest.approx(skm.f1_score(yt, yp), abs=TOL)
    # single class, never predicted: sklearn with zero_division=0
    yt1, yp1 = [1, 1, 1], [0, 0, 0]
    got1 = metrics.classification(yt1, yp1, "macro")
    assert got1["precision"] == pytest.approx(
        skm.precision_score(yt1, yp1, average="macro", zero_division=0), abs=TOL
    )
    assert got1["accuracy"] == 0.0
    # string labels work the same
    st = ["a", "b", "a"]
    assert metrics.classification(st, ["a", "a", "a"])["f1"] == pytest.approx(
        skm.f1_score(st, ["a", "a", "a"], average="macro", zero_division=0), abs=TOL
    )


def test_regression_parity() -> None:
    yt, yp = [1.0, 2.5, -3.0, 4.0], [0.5, 2.0, -2.0, 4.5]
    got = metrics.regression(yt, yp)
    assert got["mse"] == pytest.approx(skm.mean_squared_error(yt, yp), abs=TOL)
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(yt, yp)), abs=TOL)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(yt, yp), abs=TOL)


def test_bleu_parity_including_empty_prediction() -> None:
    assert metrics.bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score, abs=TOL)
    assert metrics.bleu([""], ["a b c"]) == pytest.approx(sacrebleu.corpus_bleu([""], [["a b c"]]).score, abs=TOL)


def test_nist_parity() -> None:
    tok = metrics.tokenize
    expected = corpus_nist([[tok(r)] for r in REFS], [tok(p) for p in PREDS], n=5)
    assert metrics.nist(PREDS, REFS) == pytest.approx(expected, abs=TOL)
    # with whitespace tokens the 13a tokeniser changes nothing on this data: the same as plain split()
    assert expected == pytest.approx(corpus_nist([[r.split()] for r in REFS], [p.split() for p in PREDS], n=5))


def test_nist_short_and_empty_predictions() -> None:
    # nltk raises ZeroDivisionError when no prediction has 5 tokens; the missing orders count as 0
    preds, refs = ["the cat sat", "a dog"], ["the cat sat down", "a dog barked"]
    with pytest.raises(ZeroDivisionError):
        corpus_nist([[r.split()] for r in refs], [p.split() for p in preds], n=5)
    assert metrics.nist(preds, refs) == pytest.approx(
        corpus_nist([[r.split()] for r in refs], [p.split() for p in preds], n=3), abs=TOL
    )
    assert metrics.nist(["", ""], refs) == 0.0


def test_rouge_parity() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    got = metrics.rouge(PREDS, REFS)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score(r, p)[key].fmeasure for p, r in zip(PREDS, REFS, strict=True)) / len(PREDS)
        assert got[key] == pytest.approx(expected, abs=TOL), key


# -------------------------------------------------------------------------- hand-computed cases


def test_hand_computed_classification() -> None:
    # 3 of 4 right; class 1: tp=2 fp=0 fn=1 -> p=1, r=2/3; class 0: tp=1 fp=1 fn=0 -> p=1/2, r=1
    got = metrics.classification([1, 1, 1, 0], [1, 1, 0, 0], "macro")
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["precision"] == pytest.approx((1 + 0.5) / 2)
    assert got["recall"] == pytest.approx((2 / 3 + 1) / 2)
    f1_1, f1_0 = 2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * 1 / 1.5
    assert got["f1"] == pytest.approx((f1_1 + f1_0) / 2)


def test_hand_computed_regression() -> None:
    got = metrics.regression([0.0, 0.0], [1.0, -3.0])
    assert got == pytest.approx({"mse": 5.0, "rmse": math.sqrt(5.0), "mae": 2.0})


def test_hand_computed_text_metrics() -> None:
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert metrics.bleu(["zzz yyy"], ["the cat sat on the mat"]) == pytest.approx(0.0)
    # unigram overlap 2 of 3 each way: P = R = F = 2/3; bigram overlap 1 of 2: F = 1/2
    r = metrics.rouge(["the cat ran"], ["the cat sat"])
    assert r["rouge1"] == pytest.approx(2 / 3) and r["rouge2"] == pytest.approx(0.5)
    assert r["rougeL"] == pytest.approx(2 / 3)
    assert metrics.rouge([""], ["the cat"])["rouge1"] == 0.0
    assert metrics.exact_match([" a  b ", "c", ""], ["a b", "d", ""]) == pytest.approx(2 / 3)
    assert metrics.nist(["the cat sat on the mat"], ["the cat sat on the mat"]) > metrics.nist(
        ["the dog sat on a mat"], ["the cat sat on the mat"]
    )


def test_perplexity() -> None:
    # uniform over 4 tokens: NLL log(4) per token -> perplexity 4
    assert metrics.perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        metrics.perplexity(1.0, 0)


def test_generation_only_requested() -> None:
    got = metrics.generation(["a b"], ["a b"], ["rougeL", "exact_match"])
    assert got == {"rougeL": 1.0, "exact_match": 1.0}


def test_contains_checks_the_answer_not_the_template() -> None:
    ref = " Alice lives in Athens."
    preds = [
        "Alice lives in Athens.",  # exact
        "Alice lives in Athens. Bruno has a cat.",  # right answer, then more text
        "alice lives in athens",  # case and punctuation differ: only with the options
        "Alice lives in Oslo.",  # same template, wrong fact
        "Alice lives in Athensville.",  # a word must match whole
    ]
    assert metrics.contains(preds, [ref] * 5) == pytest.approx(2 / 5)
    assert metrics.contains(preds, [ref] * 5, ignore_case=True, ignore_punctuation=True) == pytest.approx(3 / 5)
    assert metrics.contains(["", "x"], ["", ""]) == 0.5  # an empty reference matches only an empty prediction
    assert metrics.exact_match(preds[:2], [ref] * 2) == 0.5
    got = metrics.generation(preds[:2], [ref] * 2, ["contains", "exact_match"])
    assert got == {"contains": 1.0, "exact_match": 0.5}


def test_numbers() -> None:
    assert metrics.extract_number("so 3 + 4 = 7. The answer is 1,234.50 apples") == "1234.5"
    assert metrics.extract_number("no digits") is None
    assert metrics.reference_number("She has 3 then 5.\n#### 42") == "42"
    assert metrics.reference_number("-7") == "-7"
    assert metrics.numbers_equal("42", "42.0") and not metrics.numbers_equal("41", "42")
    assert not metrics.numbers_equal(None, "1")


def test_length_mismatch_and_empty() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no samples"):
        metrics.accuracy([], [])
