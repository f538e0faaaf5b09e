"""Prompt variants rendered without a model: templates, headers, few-shot samplers, chain of thought."""

from __future__ import annotations

import random
from typing import Any

import pytest
from kubeforge.api.v1alpha1.evaluation import EvaluationSpec
from kubeforge_trainer import prompts
from kubeforge_trainer.runtime import StageError


def spec(task: str, variants: list[dict[str, Any]] | None = None, **extra: Any) -> EvaluationSpec:
    metrics = {"multiple-choice": ["accuracy"], "numeric-answer": ["accuracy"], "generation": ["rougeL"]}[task]
    body: dict[str, Any] = {"model": {"uri": "org/m"}, "dataset": {"name": "d", "split": "test"},
                            "taskType": task, "metrics": metrics, **extra}
    if variants is not None:
        body["prompts"] = variants
    return EvaluationSpec.model_validate(body)


def mc(i: int, subject: str = "high_school_physics") -> dict[str, Any]:
    return {"question": f" Question {i}? ", "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "answer": i % 4,
            "subject": subject, "rationale": f"Because {i}."}


def test_legacy_prompt_is_the_old_zero_shot_cloze() -> None:
    (p,) = prompts.resolve(spec("multiple-choice"))
    assert p.legacy and p.name == "default" and p.format == "cloze" and p.few_shot.shots == 0
    rec = mc(1)
    assert prompts.render(p, rec, []).text == "Question:  Question 1? \nAnswer:"  # not stripped, no header
    conts, options = prompts.continuations(p, rec | {"choices": [" x ", "y"]})
    assert conts == [" x", " y"] and options == ["x", "y"]  # legacy scored stripped options
    (n,) = prompts.resolve(spec("numeric-answer"))
    assert n.stops == ("\nQuestion:", "Question:", "\n\n") and n.max_new_tokens == 64


def test_lettered_mmlu_rendering_matches_the_harness_template() -> None:
    (p,) = prompts.resolve(spec("multiple-choice", [{"name": "mmlu", "fewShot": {"shots": 2, "split": "train"}}]))
    assert p.format == "lettered" and p.max_new_tokens == 64
    pool = [mc(10), mc(11), mc(12, "other")]
    (ex,) = prompts.exemplars_for(p, [mc(1)], pool, same_split=False)
    assert ex == [mc(10), mc(11)]  # first_n of the same subject
    text = prompts.render(p, mc(1), ex).text
    assert text == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "Question 10?\nA. a10\nB. b10\nC. c10\nD. d10\nAnswer: C\n\n"
        "Question 11?\nA. a11\nB. b11\nC. c11\nD. d11\nAnswer: D\n\n"
        "Question 1?\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer:"
    )
    conts, options = prompts.continuations(p, mc(1))
    assert conts == [" A", " B", " C", " D"] and options == ["A", "B", "C", "D"]


def test_cloze_header_system_prompt_and_custom_sections() -> None:
    (p,) = prompts.resolve(spec("multiple-choice", [{"name": "c", "format": "cloze", "system": "Be brief."}]))
    assert prompts.render(p, mc(2), []).text == (
        "Be brief.\n\nThe following are questions (with answers) about high school physics.\n\n"
        "Question: Question 2?\nAnswer:"
    )
    assert prompts.continuations(p, mc(2))[0] == [" a2", " b2", " c2", " d2"]
    (q,) = prompts.resolve(spec("multiple-choice", [{
        "name": "custom", "header": "[{subject}] ", "user": "{question} Options:\n{choices}\nPick one {x}:",
        "targetDelimiter": "->", "exemplarSeparator": "\n---\n", "fewShot": {"shots": 1, "split": "test"},
    }]))
    recs = [mc(0), mc(1)]
    exemplars = prompts.exemplars_for(q, recs, recs, same_split=True)
    assert exemplars == [[mc(1)], [mc(0)]]  # never its own exemplar
    assert prompts.render(q, mc(0), exemplars[0]).text == (
        "[high school physics] Question 1? Options:\nA. a1\nB. b1\nC. c1\nD. d1\nPick one {x}:->B\n---\n"
        "Question 0? Options:\nA. a0\nB. b0\nC. c0\nD. d0\nPick one {x}:"
    )


def test_random_sampler_replays_the_harness_default_sampler() -> None:
    """One Random(seed) stream per pool, consumed in record order; n+1 drawn when the split is shared."""
    pool = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(12)]
    records = pool[:5]
    (p,) = prompts.resolve(spec("numeric-answer", [
        {"name": "r", "fewShot": {"shots": 3, "split": "test", "sampler": "random", "seed": 1234}}]))
    got = prompts.exemplars_for(p, records, pool, same_split=True)
    rnd = random.Random(1234)
    expected = [[x for x in rnd.sample(pool, 4) if x != r][:3] for r in records]
    assert got == expected and all(r not in ex for r, ex in zip(records, got, strict=True))
    samplers = pytest.importorskip("lm_eval.api.samplers")
    harness = samplers.ContextSampler(pool, rnd=1234)
    assert got == [list(harness.sample(3, eval_doc=r)) for r in records]
    other = prompts.exemplars_for(p, records, pool, same_split=False)
    harness = samplers.ContextSampler(pool, rnd=1234)
    assert other == [list(harness.sample(3)) for _ in records]
    first = samplers.FirstNSampler(pool)
    (f,) = prompts.resolve(spec("numeric-answer", [{"name": "f", "fewShot": {"shots": 3, "split": "test"}}]))
    assert prompts.exemplars_for(f, records, pool, same_split=True) == [list(first.sample(3, eval_doc=r))
                                                                          for r in records]


def test_chain_of_thought_rendering_and_defaults() -> None:
    qa = [{"question": "How many?", "answer": "Two and two.\n#### 4"},
          {"question": "And now?", "answer": "7", "rationale": "Three plus four."}]
    (zs, fs) = prompts.resolve(spec("numeric-answer", [
        {"name": "zs", "user": "Q: {question}\nA:", "chainOfThought": {}},
        {"name": "fs", "user": "Q: {question}\nA:", "fewShot": {"shots": 2, "split": "train"},
         "chainOfThought": {"trigger": ""}},
    ]))
    assert zs.max_new_tokens == 256 and zs.stops == ("Question:", "</s>", "<|im_end|>", "Q:")
    assert prompts.render(zs, qa[0], []).text == "Q: How many?\nA: Let's think step by step."
    assert prompts.render(fs, {"question": "Next?"}, qa).text == (
        "Q: How many?\nA: Two and two. The answer is 4.\n\n"
        "Q: And now?\nA: Three plus four. The answer is 7.\n\n"
        "Q: Next?\nA:"
    )
    assert prompts.numeric_strict_pattern(fs) == r"The answer is (\-?[0-9\.\,]+)."
    (plain,) = prompts.resolve(spec("numeric-answer", [{"name": "p", "fewShot": {"shots": 1, "split": "train"}}]))
    assert prompts.render(plain, {"question": "Next?"}, qa[:1]).text == (
        "Question: How many?\nAnswer: Two and two.\n#### 4\n\nQuestion: Next?\nAnswer:"  # the harness's gsm8k
    )
    with pytest.raises(StageError, match="exemplar 0 has no rationale"):
        prompts.render(fs, {"question": "x"}, [{"question": "q", "answer": "5"}])
    (mcot,) = prompts.resolve(spec("multiple-choice", [
        {"name": "m", "fewShot": {"shots": 1, "split": "train"}, "chainOfThought": {}}]))
    text = prompts.render(mcot, mc(1), [mc(2)]).text
    assert "Answer: Let's think step by step. Because 2. The answer is (C).\n\n" in text
    assert text.endswith("D. d1\nAnswer: Let's think step by step.")


@pytest.mark.parametrize(("text", "expected"), [
    ("so the answer is (B).", "B"),
    ("The answer is C", "C"),
    ("I think A is wrong, (D) fits", "D"),
    ("no idea", None),
    ("the answer is E", None),  # not an option of four: ignored, no lone letter either
])
def test_extract_letter(text: str, expected: str | None) -> None:
    (p,) = prompts.resolve(spec("multiple-choice", [{"name": "m", "chainOfThought": {}}]))
    assert prompts.extract_letter(p, text, 4) == expected


def test_generation_variant_per_record_kind_and_stops() -> None:
    (p,) = prompts.resolve(spec("generation", [{"name": "g", "stop": ["\n"], "fewShot": {"shots": 1,
                                                                                          "split": "train"}}]))
    assert p.stops == ("\n",) and p.max_new_tokens == 64
    inst = [{"prompt": "Say hi:", "completion": " hi"}, {"prompt": "Say yo:", "completion": " yo"}]
    assert prompts.render(p, inst[1], inst[:1]).text == "Say hi: hi\n\nSay yo:"
    qa = [{"question": "Capital of France?", "answer": "Paris"}]
    assert prompts.render(p, qa[0], []).text == "Question: Capital of France?\nAnswer:"
    assert prompts.target_text(p, qa[0]) == "Paris"
    with pytest.raises(StageError, match="may only set `system`"):
        prompts.validate_variant(p, [{"messages": [{"role": "user", "content": "x"}]}])


def test_not_enough_exemplars_names_the_subject() -> None:
    (p,) = prompts.resolve(spec("multiple-choice", [{"name": "five", "fewShot": {"shots": 2, "split": "train"}}]))
    with pytest.raises(StageError, match="asks for 2 exemplars but split 'train' has 1 of subject 'physics'"):
        prompts.exemplars_for(p, [mc(1, "physics")], [mc(5, "physics"), mc(6, "chemistry")], same_split=False)


@pytest.mark.parametrize(("n", "window", "stride"), [
    (5, 8, 4), (8, 8, 4), (9, 8, 4), (100, 16, 6), (100, 16, 16), (100, 16, 40), (33, 10, 1), (2, 2, 1),
])
def test_sliding_windows_score_every_token_once_with_bounded_context(n: int, window: int, stride: int) -> None:
    from kubeforge_trainer.evaluate import sliding_windows

    scored: list[int] = []
    for begin, end, score_from in sliding_windows(n, window, stride):
        assert 0 <= begin < end <= n and end - begin <= window and score_from >= 1
        scored += list(range(begin + score_from, end))
    assert scored == list(range(1, n))  # each token after the first, once, in order
