"""Prompt variants of an Evaluation: templates, few-shot exemplars, chain of thought (pure Python, no torch).

The rendering follows lm-evaluation-harness (lm_eval.api.task.ConfigurableTask.fewshot_context) so a
Kubeforge variant and the harness task it mirrors build the same strings:

    [system + "\\n\\n" +] header + (exemplar_question + " " + exemplar_target + "\\n\\n") * shots + question

- multiple-choice `lettered` (the harness's MMLU): `{question}\\n{choices}\\nAnswer:`, continuations ` A`,
  ` B`, ...; `cloze` (mmlu_continuation): `Question: {question}\\nAnswer:`, continuations ` <option>`;
  the header names the record's subject.
- numeric-answer (GSM8K): `Question: {question}\\nAnswer:`, exemplar target = the reference answer
  (reasoning + `#### n`); chain of thought: `{rationale} The answer is {answer}.` (gsm8k_cot).
- Few-shot samplers: `first` = the harness's `first_n`; `random` = its default sampler, one
  `random.Random(seed)` stream per pool consumed in record order (one pool per subject with
  `sameSubject`, as MMLU's per-subject tasks have).

A variant unset (`spec.prompts` absent) is the legacy prompt: zero-shot `Question: ...\\nAnswer:`,
multiple-choice scored cloze-style on stripped options, numeric-answer stopping at a blank line.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubeforge.api.v1alpha1.evaluation import (
    DEFAULT_VARIANT,
    ChainOfThought,
    EvalTask,
    EvaluationSpec,
    FewShot,
)

from .runtime import StageError

Record = dict[str, Any]
LETTERS = string.ascii_uppercase

LEGACY_QUESTION = "Question: {question}\nAnswer:"
LEGACY_NUMERIC_STOPS = ("\nQuestion:", "Question:", "\n\n")
# The harness's GSM8K `until` (its tokenizer's EOS is added by the model code, as here).
HARNESS_STOPS = ("Question:", "</s>", "<|im_end|>")
COT_STOPS = ("Q:",)
DEFAULT_MAX_NEW_TOKENS = 64
HARNESS_MAX_GEN_TOKS = 256
ANSWER_TRIGGER_TOKENS = 32

LETTERED_USER = "{question}\n{choices}\nAnswer:"
LETTERED_HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"
CLOZE_HEADER = "The following are questions (with answers) about {subject}.\n\n"
NUMERIC_COT_TARGET = "{rationale} The answer is {answer}."
MC_COT_TARGET = "{rationale} The answer is ({answer})."
NUMERIC_COT_PATTERN = r"The answer is (\-?[0-9\.\,]+)."  # the harness's gsm8k_cot strict-match, verbatim
MC_COT_PATTERN = r"answer is \(?([A-Z])\)?"
SECTIONS = re.compile(r"\{(question|choices|subject|prompt)\}")


@dataclass(frozen=True)
class Prompt:
    """A prompt variant with every default filled in for one task type."""

    name: str
    task: EvalTask
    legacy: bool
    format: str  # "lettered" | "cloze" for multiple-choice, "" otherwise
    system: str
    header: str | None  # None: the default header (multiple-choice records with a subject)
    user: str | None  # None: the record's own prompt (instruction/chat generation)
    target_delimiter: str
    separator: str
    chat: bool
    few_shot: FewShot
    cot: ChainOfThought | None
    stops: tuple[str, ...]
    max_new_tokens: int

    @property
    def strip_question(self) -> bool:
        """The harness's MMLU templates strip the question; GSM8K and the legacy prompt do not."""
        return self.task == EvalTask.MULTIPLE_CHOICE and not self.legacy

    @property
    def strip_choices(self) -> bool:
        """The legacy cloze prompt scored stripped options; the harness scores them verbatim."""
        return self.legacy


def resolve(spec: EvaluationSpec) -> list[Prompt]:
    """The spec's prompt variants with task defaults (one legacy variant when `prompts` is unset)."""
    g = spec.generation
    task = spec.task_type
    if not spec.prompts:
        legacy_stops = LEGACY_NUMERIC_STOPS if task == EvalTask.NUMERIC_ANSWER else ()
        stops = tuple(g.stop) if g.stop is not None else legacy_stops
        mc = task == EvalTask.MULTIPLE_CHOICE
        return [
            Prompt(
                name=DEFAULT_VARIANT, task=task, legacy=True, format="cloze" if mc else "",
                system="", header="",
                user=LEGACY_QUESTION if task in (EvalTask.MULTIPLE_CHOICE, EvalTask.NUMERIC_ANSWER) else None,
                target_delimiter=" ", separator="\n\n", chat=False, few_shot=FewShot(), cot=None, stops=stops,
                max_new_tokens=g.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            )
        ]
    out = []
    for v in spec.prompts:
        fmt = (v.format or "lettered") if task == EvalTask.MULTIPLE_CHOICE else ""
        if v.user is not None:
            user: str | None = v.user
        elif task == EvalTask.MULTIPLE_CHOICE:
            user = LETTERED_USER if fmt == "lettered" else LEGACY_QUESTION
        elif task == EvalTask.NUMERIC_ANSWER:
            user = LEGACY_QUESTION
        else:
            user = None  # generation: the record's prompt, or `Question: ...` for question-answer records
        long_answers = task == EvalTask.NUMERIC_ANSWER or v.chain_of_thought is not None
        stops = HARNESS_STOPS + (COT_STOPS if v.chain_of_thought is not None else ())
        out.append(
            Prompt(
                name=v.name, task=task, legacy=False, format=fmt, system=v.system or "", header=v.header, user=user,
                target_delimiter=v.target_delimiter, separator=v.exemplar_separator, chat=v.chat,
                few_shot=v.few_shot, cot=v.chain_of_thought,
                stops=tuple(v.stop) if v.stop is not None else tuple(g.stop) if g.stop is not None else stops,
                max_new_tokens=g.max_new_tokens or (HARNESS_MAX_GEN_TOKS if long_answers else DEFAULT_MAX_NEW_TOKENS),
            )
        )
    return out


# ----------------------------------------------------------------------------------------- records


def answer_index(answer: Any, choices: Sequence[Any], index: int) -> int:
    """The gold option: an index, a letter (A, B, ...), a digit string, or the option's text."""
    n = len(choices)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n:
        return answer
    s = str(answer).strip()
    if len(s) == 1 and s.upper() in LETTERS[:n]:
        return LETTERS.index(s.upper())
    if s.isdigit() and int(s) < n:
        return int(s)
    texts = [str(c).strip() for c in choices]
    if s in texts:
        return texts.index(s)
    raise StageError(
        f"record {index}: answer {answer!r} is neither an index 0..{n - 1}, a letter "
        f"A..{LETTERS[min(n, 26) - 1]} nor one of the choices",
        reason="InvalidData",
    )


def split_answer(answer: str) -> tuple[str, str]:
    """(reasoning, final answer) of a GSM8K-style `reasoning #### 42` answer; no `####`: ("", answer)."""
    if "####" in answer:
        reasoning, final = answer.rsplit("####", 1)
        return reasoning.strip(), final.strip()
    return "", answer.strip()


def rationale_of(record: Record) -> str:
    """A record's worked reasoning: its `rationale`, else the text before `####` of its answer."""
    own = str(record.get("rationale") or "").strip()
    if own:
        return own
    return split_answer(str(record.get("answer", "")))[0]


def subject_of(record: Record) -> str:
    """The record's subject with `_` as spaces (`high_school_physics` -> `high school physics`)."""
    return str(record.get("subject") or "").replace("_", " ").strip()


def choices_of(record: Record, prompt: Prompt) -> list[str]:
    """The options as strings (stripped for the legacy prompt)."""
    return [str(c).strip() if prompt.strip_choices else str(c) for c in record["choices"]]


def lettered(choices: Sequence[str]) -> str:
    """`A. first\\nB. second...` (the harness's MMLU listing)."""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def maybe_delimit(prefix: str, suffix: str, delimiter: str) -> str:
    """Join with `delimiter` unless either side already has whitespace at the seam (the harness's rule)."""
    if not prefix:
        return suffix
    if not suffix:
        return prefix
    if prefix[-1].isspace() or suffix[0].isspace():
        return prefix + suffix
    return prefix + delimiter + suffix


def fill(template: str, values: dict[str, str]) -> str:
    """Replace the named sections `{question}`, `{choices}`, `{subject}`, `{prompt}`; other braces stay."""
    return SECTIONS.sub(lambda m: values.get(m.group(1), m.group(0)), template)


# ------------------------------------------------------------------------------------------ rendering


def question_text(prompt: Prompt, record: Record) -> str:
    """The question section of one record (exemplar or evaluated)."""
    if prompt.user is None:
        if "prompt" in record:
            return str(record["prompt"])
        return fill(LEGACY_QUESTION, {"question": str(record["question"])})
    question = str(record.get("question", ""))
    values = {
        "question": question.strip() if prompt.strip_question else question,
        "subject": subject_of(record),
        "prompt": str(record.get("prompt", "")),
    }
    if "choices" in record and record["choices"] is not None:
        values["choices"] = lettered(choices_of(record, prompt))
    return fill(prompt.user, values)


def header_text(prompt: Prompt, record: Record) -> str:
    """The header (description) for one record; the default names its subject, when it has one."""
    if prompt.header is not None:
        return fill(prompt.header, {"subject": subject_of(record)})
    subject = subject_of(record)
    if prompt.task != EvalTask.MULTIPLE_CHOICE or not subject:
        return ""
    return fill(LETTERED_HEADER if prompt.format == "lettered" else CLOZE_HEADER, {"subject": subject})


def gold_index(record: Record, index: int) -> int:
    """The gold option of a multiple-choice record."""
    return answer_index(record["answer"], list(record["choices"]), index)


def target_text(prompt: Prompt, record: Record, index: int = 0) -> str:
    """How an exemplar's answer is written after its question."""
    if prompt.task == EvalTask.MULTIPLE_CHOICE:
        gold = gold_index(record, index)
        if prompt.cot is not None:
            return cot_target(prompt, record, LETTERS[gold], index)
        return LETTERS[gold] if prompt.format == "lettered" else choices_of(record, prompt)[gold]
    if prompt.task == EvalTask.NUMERIC_ANSWER and prompt.cot is not None:
        return cot_target(prompt, record, split_answer(str(record["answer"]))[1], index)
    if "completion" in record:
        return str(record["completion"])
    return str(record["answer"])


def cot_target(prompt: Prompt, record: Record, answer: str, index: int) -> str:
    """A chain-of-thought exemplar: the trigger, the rationale, the stated answer."""
    assert prompt.cot is not None
    rationale = rationale_of(record)
    if not rationale:
        raise StageError(
            f"prompt variant {prompt.name!r}: few-shot chain-of-thought exemplar {index} has no rationale; give the "
            "Dataset a rationale column (or GSM8K-style `reasoning #### answer` answers)",
            reason="InvalidData",
        )
    default = MC_COT_TARGET if prompt.task == EvalTask.MULTIPLE_CHOICE else NUMERIC_COT_TARGET
    template = prompt.cot.exemplar_target or default
    body = template.replace("{rationale}", rationale).replace("{answer}", answer)
    return maybe_delimit(prompt.cot.trigger, body, " ")


def query_text(prompt: Prompt, record: Record) -> str:
    """The evaluated question, followed by the chain-of-thought trigger when there is one."""
    text = question_text(prompt, record)
    if prompt.cot is not None and prompt.cot.trigger:
        text = maybe_delimit(text, prompt.cot.trigger, " ")
    return text


@dataclass
class Rendered:
    """The context of one evaluated record: plain text, or chat messages to render with the tokenizer."""

    text: str
    messages: list[dict[str, str]] | None = None


def render(prompt: Prompt, record: Record, exemplars: Sequence[Record]) -> Rendered:
    """System, header, exemplars and the question, as the harness's fewshot_context builds them."""
    header = header_text(prompt, record)
    if prompt.chat:
        messages: list[dict[str, str]] = []
        system = maybe_delimit(prompt.system, header, prompt.separator)
        if system:
            messages.append({"role": "system", "content": system})
        for i, ex in enumerate(exemplars):
            messages.append({"role": "user", "content": question_text(prompt, ex)})
            messages.append({"role": "assistant", "content": target_text(prompt, ex, i)})
        messages.append({"role": "user", "content": query_text(prompt, record)})
        return Rendered(text="", messages=messages)
    body = "".join(
        maybe_delimit(question_text(prompt, ex), target_text(prompt, ex, i), prompt.target_delimiter)
        + prompt.separator
        for i, ex in enumerate(exemplars)
    )
    body += query_text(prompt, record)
    prefix = maybe_delimit(prompt.system, header, prompt.separator)
    return Rendered(text=maybe_delimit(prefix, body, prompt.separator))


def continuations(prompt: Prompt, record: Record) -> tuple[list[str], list[str]]:
    """Multiple-choice continuations to score, and the option strings acc_norm divides by (in characters)."""
    options = [LETTERS[i] for i in range(len(record["choices"]))] if prompt.format == "lettered" \
        else choices_of(record, prompt)
    delimiter = "" if prompt.chat else prompt.target_delimiter  # the harness drops it under a chat template
    return [delimiter + o for o in options], options


# ------------------------------------------------------------------------------------------- few-shot


def exemplars_for(
    prompt: Prompt, records: Sequence[Record], pool: Sequence[Record], same_split: bool
) -> list[list[Record]]:
    """The exemplars of each evaluated record, drawn as the harness's samplers draw them."""
    fs = prompt.few_shot
    if fs.shots == 0:
        return [[] for _ in records]
    by_subject = fs.same_subject and any(str(r.get("subject") or "") for r in [*records, *pool])
    groups: dict[str, list[Record]] = {}
    for r in pool:
        groups.setdefault(str(r.get("subject") or "") if by_subject else "", []).append(r)
    streams: dict[str, random.Random] = {}
    out: list[list[Record]] = []
    for rec in records:
        key = str(rec.get("subject") or "") if by_subject else ""
        candidates = groups.get(key, [])
        own = [x for x in candidates if x != rec] if same_split else list(candidates)
        if len(own) < fs.shots:
            where = f" of subject {key!r}" if by_subject else ""
            raise StageError(
                f"prompt variant {prompt.name!r} asks for {fs.shots} exemplars but split {fs.split!r} has "
                f"{len(own)}{where}; lower fewShot.shots, draw from another split, or (multiple-choice) prepare "
                "the Dataset with split.stratify so every subject reaches the train split",
                reason="NotEnoughExemplars",
            )
        if fs.sampler == "first":
            out.append(own[: fs.shots])
            continue
        rnd = streams.setdefault(key, random.Random(fs.seed))
        if not same_split:
            out.append(rnd.sample(candidates, fs.shots))
            continue
        drawn = [x for x in rnd.sample(candidates, min(fs.shots + 1, len(candidates))) if x != rec][: fs.shots]
        if len(drawn) < fs.shots:  # duplicates of the record were drawn: redraw without them
            drawn = rnd.sample(own, fs.shots)
        out.append(drawn)
    return out


# ------------------------------------------------------------------------------------ answer extraction


def extract_letter(prompt: Prompt, text: str, n_choices: int) -> str | None:
    """The option letter a chain-of-thought answer names: the pattern's group, else the last lone letter."""
    valid = LETTERS[:n_choices]
    pattern = (prompt.cot.answer_pattern if prompt.cot else None) or MC_COT_PATTERN
    m = re.search(pattern, text)
    if m and m.groups() and m.group(1):
        letter = str(m.group(1)).strip().strip("()").upper()
        if letter in valid:
            return letter
    lone: list[tuple[str, str]] = re.findall(rf"\(([{valid}])\)|\b([{valid}])\b", text)
    if lone:
        a, b = lone[-1]
        return a or b
    return None


def numeric_strict_pattern(prompt: Prompt) -> str:
    """The strict-match regex: the variant's, else gsm8k_cot's (chain of thought) or gsm8k's `#### n`."""
    from .metrics import GSM8K_STRICT

    if prompt.cot is not None:
        return prompt.cot.answer_pattern or NUMERIC_COT_PATTERN
    return GSM8K_STRICT


def validate_variant(prompt: Prompt, records: Sequence[Record]) -> None:
    """Fail before any model is loaded when a variant cannot be applied to these records."""
    if prompt.legacy:
        return
    keys = {k for r in records for k in r}
    if prompt.task == EvalTask.GENERATION and "messages" in keys:
        v = prompt
        if v.user is not None or v.header or v.few_shot.shots or v.chat:
            raise StageError(
                f"prompt variant {v.name!r}: chat records already carry their prompt; with `messages` data a "
                "variant may only set `system`",
                reason="InvalidPrompt",
            )
    if prompt.user is not None:
        unknown = set(SECTIONS.findall(prompt.user)) - keys - {"subject"}
        if unknown:
            raise StageError(
                f"prompt variant {prompt.name!r}: user template names {sorted(unknown)} but the records have "
                f"{sorted(keys)}",
                reason="InvalidPrompt",
            )
