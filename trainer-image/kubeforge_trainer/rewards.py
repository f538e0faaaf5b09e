"""Built-in programmatic rewards for online RL (spec.reward.functions).

Each builder returns a TRL reward function `f(prompts, completions, **columns) -> list[float]`
whose `__name__` is the metric name TRL logs (`rewards/<name>/mean`). Scores lie in [0, 1] so
weights in the spec mean what they say.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kubeforge.api.v1alpha1.rlhfjob import RewardFunction

from .runtime import StageError

RewardFn = Callable[..., list[float]]

# Dataset column holding the reference answer (renamed from `completion` so it cannot be
# confused with the sampled `completions`).
REFERENCE_COLUMN = "reference"


def completion_text(completion: Any) -> str:
    """Plain text of a completion: a string, or the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            return str(last.get("content", ""))
    return str(completion)


def length_score(text: str, target: int) -> float:
    """1 at the target length, falling linearly to 0 at 0 or 2x the target."""
    return max(0.0, 1.0 - abs(len(text) - target) / target)


def distinct_ngram_ratio(text: str, n: int = 3) -> float:
    """Unique/total word n-grams: 1 without repetition, towards 0 for loops."""
    words = text.split()
    if len(words) < n:
        return 1.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams)


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def build_reward_function(fn: RewardFunction, index: int) -> RewardFn:
    """A TRL reward function for one spec entry; missing parameters are a one-line StageError."""
    where = f"spec.reward.functions[{index}] ({fn.name})"
    name = fn.name.replace("-", "_")

    if fn.name == "length":
        if fn.target_length is None:
            raise StageError(f"{where} needs targetLength (target completion length in characters)")
        target = fn.target_length

        def length(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
            return [length_score(completion_text(c), target) for c in completions]

        out: RewardFn = length
    elif fn.name == "format":
        if not fn.pattern:
            raise StageError(f"{where} needs pattern (a regular expression the completion should match)")
        try:
            regex = re.compile(fn.pattern, re.DOTALL)
        except re.error as exc:
            raise StageError(f"{where}: pattern is not a valid regular expression: {exc}") from None

        def format_(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
            return [1.0 if regex.search(completion_text(c)) else 0.0 for c in completions]

        out = format_
    elif fn.name == "keyword":
        if not fn.keywords:
            raise StageError(f"{where} needs keywords (a non-empty list of words to reward)")
        words = re.compile(r"\b(" + "|".join(re.escape(k) for k in fn.keywords) + r")\b", re.IGNORECASE)

        def keyword(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
            return [1.0 if words.search(completion_text(c)) else 0.0 for c in completions]

        out = keyword
    elif fn.name == "exact-match":

        def exact_match(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
            refs = columns.get(REFERENCE_COLUMN)
            if refs is None:
                raise StageError(
                    f"{where} needs a `completion` column in the prompt Dataset (task instruction) to compare with"
                )
            return [
                1.0 if _normalise(completion_text(c)) == _normalise(completion_text(r)) else 0.0
                for c, r in zip(completions, refs, strict=True)
            ]

        out = exact_match
    elif fn.name == "no-repetition":

        def no_repetition(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
            return [distinct_ngram_ratio(completion_text(c)) for c in completions]

        out = no_repetition
    else:  # pragma: no cover - the API's Literal rejects other names
        raise StageError(f"{where}: unknown reward function")
    out.__name__ = name
    return out


def end_token(tokenizer: Any) -> str | None:
    """The token a reward model's plain-text pairs end with: EOS, or an encoder's [SEP] when it has no EOS.
    One choice for training (reward.py, RewardConfig.eos_token) and for scoring (ScoredAsTrained)."""
    token = tokenizer.eos_token or tokenizer.sep_token
    return str(token) if token else None


class ScoredAsTrained:
    """A reward model's tokenizer that tokenizes plain-text inputs as TRL's RewardTrainer trained it.

    The RewardTrainer appends the end token (`end_token`) to non-conversational chosen/rejected texts and
    tokenizes them with the tokenizer's own special tokens (a BOS, an encoder's [CLS]); the score is read
    at the last token. TRL's GRPO/RLOO/online-DPO trainers score `prompt + completion` without the end
    token and with `add_special_tokens=False`, so the score came from a position the model was never
    trained on (on the quickstart's held-out pairs that ranked at chance, 0.45, against 0.78 as trained).
    Used for plain-text datasets only (rlhf.py): a chat template already closes the assistant turn and
    carries its special tokens.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._end = end_token(tokenizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, text: Any = None, **kwargs: Any) -> Any:
        end = self._end
        if end and isinstance(text, str):
            text = text if text.endswith(end) else text + end
        elif end and isinstance(text, list):
            text = [t if t.endswith(end) else t + end for t in text]
        kwargs.pop("add_special_tokens", None)  # the RewardTrainer's tokenization: the tokenizer's defaults
        return self._tok(text=text, **kwargs)


def build_reward_functions(functions: list[RewardFunction] | None) -> tuple[list[RewardFn], list[float]]:
    """Reward functions and their weights, in spec order."""
    fns = [build_reward_function(f, i) for i, f in enumerate(functions or [])]
    return fns, [f.weight for f in functions or []]
