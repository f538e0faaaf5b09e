"""spec.metricOptions semantics against reference implementations: sacrebleu, rouge-score (and an
independent Chinese ROUGE), SQuAD's normalize_answer, the lm-evaluation-harness exact match and filters."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest
import sacrebleu
from kubeforge_trainer import metrics
from rouge_score import rouge_scorer

TOL = 1e-9

# ------------------------------------------------------------------------------------------------ BLEU

SHORT_PREDS = ["blue", "green", "the sun", "42", "red"]
SHORT_REFS = ["blue", "yellow", "the sun", "42", "a red one"]


def test_bleu_effective_order_parity_and_short_answers() -> None:
    plain = sacrebleu.corpus_bleu(SHORT_PREDS, [SHORT_REFS]).score
    effective = sacrebleu.corpus_bleu(SHORT_PREDS, [SHORT_REFS], use_effective_order=True).score
    assert metrics.bleu(SHORT_PREDS, SHORT_REFS) == pytest.approx(plain, abs=TOL)
    assert metrics.bleu(SHORT_PREDS, SHORT_REFS, effective_order=True) == pytest.approx(effective, abs=TOL)
    # one-word answers: no prediction has 3-grams, so plain corpus BLEU is 0 whatever the matches
    words_p, words_r = ["blue", "green", "red"], ["blue", "green", "pink"]
    assert metrics.bleu(words_p, words_r) == 0.0
    assert metrics.bleu(words_p, words_r, effective_order=True) == pytest.approx(
        sacrebleu.corpus_bleu(words_p, [words_r], use_effective_order=True).score, abs=TOL
    )
    assert metrics.bleu(words_p, words_r, effective_order=True) == pytest.approx(100 * 2 / 3, abs=1e-6)


def test_bleu_and_nist_tokenizers() -> None:
    preds, refs = ["今天天气很好", "我喜欢猫"], ["今天天气不错", "我喜欢狗"]
    assert metrics.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score, abs=TOL)
    zh = metrics.bleu(preds, refs, tokenize="zh")
    assert zh == pytest.approx(sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score, abs=TOL)
    assert zh > 0 == metrics.bleu(preds, refs)  # 13a sees each sentence as one word
    assert metrics.tokenize("今天 好", "zh") == ["今", "天", "好"]
    assert metrics.nist(preds, refs, tokenizer="zh") > 0


# ----------------------------------------------------------------------------------------------- ROUGE


def _random_ascii(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + string.punctuation + "   _'\n\t"
    words = ["running", "cats", "the", "happily", "generalization", "A", "i.e.", "don't", "x_y", "42nd"]
    return "".join(rng.choice(words) + " " if rng.random() < 0.4 else rng.choice(alphabet) for _ in range(40))


def test_unicode_tokenizer_equals_rouge_score_on_ascii() -> None:
    rng = random.Random(0)
    default = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)._tokenizer
    ours = metrics.UnicodeTokenizer(use_stemmer=True)
    plain, plain_default = metrics.UnicodeTokenizer(use_stemmer=False), rouge_scorer.RougeScorer(["rouge1"])._tokenizer
    for _ in range(300):
        text = _random_ascii(rng)
        assert ours.tokenize(text) == default.tokenize(text), text
        assert plain.tokenize(text) == plain_default.tokenize(text), text
    preds = [_random_ascii(rng) for _ in range(30)]
    refs = [_random_ascii(rng) for _ in range(30)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {k: sum(scorer.score(r, p)[k].fmeasure for p, r in zip(preds, refs, strict=True)) / 30
                for k in ("rouge1", "rouge2", "rougeL")}
    assert metrics.rouge(preds, refs) == pytest.approx(expected, abs=TOL)
    assert metrics.rouge(preds, refs, "rouge-score") == pytest.approx(expected, abs=TOL)


ZH_PREDS = ["今天天气很好\uff0c我们去公园散步吧。", "他喜欢在周末读书和写字", "机器学习模型需要大量数据", "我不知道"]
ZH_REFS = [
    "今天天气不错\uff0c我们去公园走走。", "他周末喜欢读书", "深度学习模型需要很多数据进行训练", "这个问题很难回答",
]


class _Whitespace:
    """Tokens are the whitespace-separated pieces (for text split by hand)."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def _chars(text: str) -> str:
    """Chinese split into characters by hand, punctuation dropped."""
    return " ".join(ch for ch in text if "\u4e00" <= ch <= "\u9fff")


def test_rouge_on_chinese_is_character_level_and_matches_references() -> None:
    # rouge-score's own tokenizer keeps only [a-z0-9]: every Chinese score is 0
    assert metrics.rouge(ZH_PREDS, ZH_REFS, "rouge-score") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    ours = metrics.rouge(ZH_PREDS, ZH_REFS)
    assert ours["rouge1"] > 0.3
    # reference 1: rouge-score's scoring on text split into characters by hand
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Whitespace())
    for p, r in zip(ZH_PREDS, ZH_REFS, strict=True):
        expected = scorer.score(_chars(r), _chars(p))
        got = metrics.rouge_per_sample(p, r)
        assert got == pytest.approx({k: expected[k].fmeasure for k in got}, abs=TOL)
    # reference 2: by hand, "今天天气很好" vs "今天天气不错": 4 of 6 characters and 3 of 5 bigrams shared
    one = metrics.rouge_per_sample("今天天气很好", "今天天气不错")
    assert one == pytest.approx({"rouge1": 4 / 6, "rouge2": 3 / 5, "rougeL": 4 / 6}, abs=TOL)
    # mixed scripts: Chinese characters, English words (stemmed) and accented words all count
    mixed = metrics.rouge_per_sample("GPU 训练 running café", "gpu 训练 runs café")
    assert mixed["rouge1"] == pytest.approx(1.0)


def test_rouge_on_chinese_matches_rouge_chinese() -> None:
    """An independent implementation (rouge-chinese, set-based n-grams): equal where no n-gram repeats."""
    rouge_chinese = pytest.importorskip("rouge_chinese")
    preds = ["我们去公园散步", "机器学习模型需要数据", "猫喜欢吃鱼"]
    refs = ["我们在公园走路", "学习模型需要很多数据", "狗喜欢吃肉"]
    for p, r in zip(preds, refs, strict=True):
        assert all(c == 1 for c in Counter(p).values()) and all(c == 1 for c in Counter(r).values())
        theirs = rouge_chinese.Rouge().get_scores(" ".join(p), " ".join(r))[0]
        got = metrics.rouge_per_sample(p, r)
        assert got["rouge1"] == pytest.approx(theirs["rouge-1"]["f"], abs=1e-7)
        assert got["rouge2"] == pytest.approx(theirs["rouge-2"]["f"], abs=1e-7)
        assert got["rougeL"] == pytest.approx(theirs["rouge-l"]["f"], abs=1e-7)


def test_generation_metrics_follow_the_options() -> None:
    from kubeforge.api.v1alpha1.evaluation import MetricOptions

    opts = MetricOptions.model_validate({"bleu": {"effectiveOrder": True}, "rouge": {"tokenizer": "rouge-score"},
                                         "exactMatch": {"ignoreCase": True}})
    got = metrics.generation(["Blue", "红色"], ["blue", "红色"], ["bleu", "rougeL", "exact_match"], opts)
    assert got["exact_match"] == 1.0 and got["rougeL"] == 0.5  # rouge-score: "红色" is no token at all
    assert metrics.generation(["Blue"], ["blue"], ["exact_match"])["exact_match"] == 0.0


# ----------------------------------------------------------------------------------------- exact match


def squad_normalize_answer(s: str) -> str:
    """SQuAD v1.1's official evaluate script."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


SQUAD_CASES = ["The Eiffel Tower!", "  eiffel   tower", "an apple a day", "Apple, a Day.", "theatre",
               "The the the", "U.S.A.", "usa", "Café au lait", "CAFÉ AU LAIT", "", "a"]


def test_exact_match_squad_options_equal_squad_normalize_answer() -> None:
    for text in SQUAD_CASES:
        got = metrics.normalize_answer(text, ignore_case=True, ignore_punctuation=True, ignore_articles=True)
        assert got == squad_normalize_answer(text), text
    preds, refs = SQUAD_CASES[::2], SQUAD_CASES[1::2]
    expected = sum(squad_normalize_answer(p) == squad_normalize_answer(r) for p, r in zip(preds, refs, strict=True))
    got = metrics.exact_match(preds, refs, ignore_case=True, ignore_punctuation=True, ignore_articles=True)
    assert got == pytest.approx(expected / len(preds)) and 0 < got < 1
    assert metrics.exact_match(["The cat."], ["cat"]) == 0.0  # no options: only whitespace is normalised


def test_exact_match_equals_the_harness_exact_match() -> None:
    harness = pytest.importorskip("lm_eval.api.metrics")
    preds = ["Paris.", "paris", "$1,000", "The answer is 42.", "NEW YORK", "rome"]
    refs = ["Paris", "Paris", "1000", "#### 42", "new york", "Rome!"]
    for options in (
        {"ignore_case": True},
        {"ignore_punctuation": True},
        {"ignore_case": True, "ignore_punctuation": True},
        {"ignore_case": True, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$", "The answer is "]},
    ):
        theirs = harness.exact_match_hf_evaluate(preds, refs, **options)["exact_match"]
        ours = metrics.exact_match(preds, refs, **options)  # type: ignore[arg-type]
        assert ours == pytest.approx(theirs, abs=TOL), options


def test_gsm8k_filters_equal_the_harness_regex_filter() -> None:
    extraction = pytest.importorskip("lm_eval.filters.extraction")
    outputs = ["She has 3 + 4 = 7 pens.\n#### 7", "#### 1,234.", "The answer is 12. Then 5", "no number",
               "cost $4.50 and 3", "-8 degrees", "#### -3\n#### 9", "The answer is 7"]
    for pattern, group in ((metrics.GSM8K_STRICT, 0), (metrics.GSM8K_FLEXIBLE, -1), (metrics.GSM8K_COT_STRICT, 0)):
        f = extraction.RegexFilter(regex_pattern=pattern, group_select=group)
        theirs = [r[0] for r in f.apply([[o] for o in outputs], [{} for _ in outputs])]
        assert [metrics.regex_extract(o, pattern, group) for o in outputs] == theirs, pattern
    assert metrics.gsm8k_match("1,234.", "reasoning\n#### 1234")
    assert not metrics.gsm8k_match("[invalid]", "#### 7")
