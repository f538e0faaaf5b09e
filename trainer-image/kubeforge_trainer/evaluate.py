"""The `evaluate` stage: run a model over a Dataset split, compute metrics, apply thresholds.

The stage succeeds whenever the evaluation ran; whether the model is good enough is `passed` (and
`failedThresholds`) in the result details, which the operator turns into the `Passed` condition
that promotion gates read. Outputs: `report.json` (metrics, thresholds, config), `samples.jsonl`
(one line per sample and prompt variant) and, when matplotlib is installed, `plot.png`.

Task types and the records they read:
- classification: `text`, `label` (name or id; mapped through the model's label2id) → argmax.
- regression: `text`, `value` → the single regression logit.
- generation: `prompt`, `completion`, chat `messages` (last assistant turn as reference), or
  `question`, `answer`.
- language-modeling: `text` (or prompt+completion) → perplexity = exp(mean token NLL), texts longer
  than the context scored with a sliding window.
- multiple-choice: `question`, `choices`, `answer` (index or letter), optional `subject` → option
  log-likelihoods (lettered or cloze, `acc` and `acc_norm`) or, with chain of thought, the letter
  extracted from generated reasoning.
- numeric-answer: `question`, `answer` (`... #### 42`) → generate, compare the last number, plus the
  lm-evaluation-harness GSM8K strict-match and flexible-extract exact match.

`spec.prompts` lists prompt variants (template, few-shot, chain of thought; see prompts.py); each is
scored on the same records, the first one's metrics are `metrics`, all of them `variants`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubeforge.api.v1alpha1.evaluation import EvalTask, Evaluation, EvaluationSpec, Threshold
from kubeforge.stage import StageConfig, StageResult

from . import dataio, metrics, prompts
from .prompts import Prompt, answer_index
from .runtime import ProgressReporter, StageError, artifact_for, digest_path, lineage_of, write_lineage

__all__ = ["answer_index"]

Record = dict[str, Any]
BATCH_SIZE = 16
MAX_INPUT_TOKENS = 2048
# Prompt formats of the legacy (no `spec.prompts`) MMLU- and GSM8K-style evaluation.
MC_PROMPT = prompts.LEGACY_QUESTION
NUMERIC_PROMPT = prompts.LEGACY_QUESTION
NUMERIC_STOPS = prompts.LEGACY_NUMERIC_STOPS
# Strict pattern of a two-stage chain of thought (the answer generated after `answerTrigger`): first number.
FIRST_NUMBER = r"(\-?[0-9\.\,]*[0-9]+)"
# Columns checked before any model is loaded (generation/language-modeling accept several shapes).
REQUIRED_COLUMNS: dict[EvalTask, tuple[str, ...]] = {
    EvalTask.CLASSIFICATION: ("text", "label"),
    EvalTask.REGRESSION: ("text", "value"),
    EvalTask.MULTIPLE_CHOICE: ("question", "choices", "answer"),
    EvalTask.NUMERIC_ANSWER: ("question", "answer"),
}


@dataclass
class Outcome:
    """What a task evaluator returns."""

    metrics: dict[str, float]
    samples: list[Record]
    plot: Callable[[Path], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """Everything an evaluator needs."""

    spec: EvaluationSpec
    records: list[Record]
    model_location: str
    tokenizer_location: str
    reporter: ProgressReporter
    device: str
    wanted: list[str]
    pools: dict[str, list[Record]] = field(default_factory=dict)  # few-shot splits by name
    eval_split: str = "test"
    cache: dict[str, Any] = field(default_factory=dict)  # loaded model and tokenizer, shared by variants

    def progress(self, done: int, total: int) -> None:
        """Report batches done as steps."""
        self.reporter.update(step=done, total_steps=max(total, 1))


# ---------------------------------------------------------------------------------------- loading


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _tokenizer(ctx: Context, padding_side: str) -> Any:
    from .modelio import load_tokenizer

    if "tokenizer" not in ctx.cache:
        ctx.cache["tokenizer"] = load_tokenizer(
            ctx.tokenizer_location, trust_remote_code=ctx.spec.model.trust_remote_code
        )
    tok = ctx.cache["tokenizer"]
    tok.padding_side = padding_side
    return tok


def _causal_lm(ctx: Context) -> Any:
    from .modelio import load_causal_lm

    if "causal_lm" not in ctx.cache:
        model = load_causal_lm(ctx.model_location, merge=True, trust_remote_code=ctx.spec.model.trust_remote_code)
        ctx.cache["causal_lm"] = model.to(ctx.device).eval()
    return ctx.cache["causal_lm"]


def _classifier(ctx: Context) -> Any:
    """A sequence-classification model (a PEFT adapter, with the head its manifest names, is merged into its base)."""
    from .modelio import load_sequence_classifier

    loc = ctx.model_location
    trust = ctx.spec.model.trust_remote_code
    try:
        model: Any = load_sequence_classifier(loc, merge=True, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise StageError(
            f"cannot load a sequence-classification model from {loc}: {str(exc).splitlines()[0]}; "
            f"taskType {ctx.spec.task_type.value} needs a classifier/regression head (e.g. a RewardModel)"
        ) from None
    return model.to(ctx.device).eval()


def _max_len(tok: Any, model: Any, reserve: int = 0) -> int:
    limits = [MAX_INPUT_TOKENS, int(getattr(tok, "model_max_length", MAX_INPUT_TOKENS) or MAX_INPUT_TOKENS)]
    pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if pos:
        limits.append(int(pos))
    return max(8, min(limits) - reserve)


def _batches(n: int, size: int | None = None) -> list[range]:
    size = size or BATCH_SIZE
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _need(records: list[Record], columns: Sequence[str], task: str) -> None:
    available = sorted({k for r in records for k in r})
    for c in columns:
        if c not in available:
            raise StageError(
                f"taskType {task} needs column {c!r} in the evaluation split; available columns: {available}; "
                "prepare the Dataset with the matching task or pick another taskType",
                reason="MissingColumn",
            )


# ------------------------------------------------------------------------- classification/regression


def _label_id(label: Any, label2id: dict[str, int], num_labels: int) -> int:
    if isinstance(label, bool):
        label = int(label)
    if isinstance(label, int) and 0 <= label < num_labels:
        return label
    s = str(label)
    if s in label2id:
        return int(label2id[s])
    if s.lstrip("-").isdigit() and 0 <= int(s) < num_labels:
        return int(s)
    raise StageError(
        f"label {label!r} is not one of the model's labels {sorted(label2id)} (ids 0..{num_labels - 1}); "
        "set id2label/label2id in the model config or map labels with the Dataset's processing.labelMap",
        reason="LabelMismatch",
    )


def _sequence_logits(ctx: Context, model: Any, tok: Any, texts: list[str]) -> list[list[float]]:
    import torch

    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    max_len = _max_len(tok, model)
    out: list[list[float]] = []
    batches = _batches(len(texts))
    for b, idx in enumerate(batches):
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.to(ctx.device) for k, v in enc.items()}).logits
        out.extend(logits.float().cpu().tolist())
        ctx.progress(b + 1, len(batches))
    return out


def eval_classification(ctx: Context) -> Outcome:
    """argmax of a sequence classifier; labels matched through the model's label2id."""
    _need(ctx.records, ["text", "label"], "classification")
    model = _classifier(ctx)
    tok = _tokenizer(ctx, "right")
    num_labels = int(model.config.num_labels)
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    y_true = [_label_id(r["label"], label2id, num_labels) for r in ctx.records]
    logits = _sequence_logits(ctx, model, tok, [str(r["text"]) for r in ctx.records])
    y_pred = [max(range(len(row)), key=row.__getitem__) for row in logits]
    m = metrics.classification(y_true, y_pred, ctx.spec.average)
    samples = []
    for r, t, p, row in zip(ctx.records, y_true, y_pred, logits, strict=True):
        probs = _softmax(row)
        samples.append(
            {
                "input": str(r["text"])[:500],
                "reference": id2label.get(t, str(t)),
                "prediction": id2label.get(p, str(p)),
                "score": float(t == p),
                "confidence": probs[p],
            }
        )
    names = [id2label.get(i, str(i)) for i in range(num_labels)]
    return Outcome(
        metrics={k: v for k, v in m.items() if k in ctx.wanted},
        samples=samples,
        plot=lambda path: _plot_confusion(path, y_true, y_pred, names),
    )


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def eval_regression(ctx: Context) -> Outcome:
    """The single regression logit against `value`."""
    _need(ctx.records, ["text", "value"], "regression")
    model = _classifier(ctx)
    if int(model.config.num_labels) != 1:
        raise StageError(
            f"taskType regression needs a single-output model (num_labels=1); {ctx.model_location} has "
            f"{model.config.num_labels} labels: use taskType classification for it"
        )
    tok = _tokenizer(ctx, "right")
    preds = [row[0] for row in _sequence_logits(ctx, model, tok, [str(r["text"]) for r in ctx.records])]
    refs = [float(r["value"]) for r in ctx.records]
    m = metrics.regression(refs, preds)
    errors = [abs(p - y) for y, p in zip(refs, preds, strict=True)]
    samples: list[Record] = [
        {"input": str(r["text"])[:500], "reference": y, "prediction": p, "score": err}
        for r, y, p, err in zip(ctx.records, refs, preds, errors, strict=True)
    ]
    return Outcome(
        metrics={k: v for k, v in m.items() if k in ctx.wanted},
        samples=samples,
        plot=lambda path: _plot_hist(path, errors, "absolute error"),
    )


# ---------------------------------------------------------------------------------------- encoding


def encode(tok: Any, text: str) -> list[int]:
    """Token ids as lm-evaluation-harness encodes them: the tokenizer's default special tokens, none when
    the text already starts with the BOS token (a rendered chat template)."""
    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos):
        return list(tok(text, add_special_tokens=False)["input_ids"])
    return list(tok(text)["input_ids"])


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as the harness does: trailing spaces of the context move to
    the continuation, the whole string is encoded once and cut after the context's tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tok, context + continuation)
    ctx_ids = encode(tok, context)
    return ctx_ids, whole[len(ctx_ids):]


def _as_text(tok: Any, rendered: prompts.Rendered) -> str:
    """A rendered prompt as the string fed to the tokenizer (chat messages through its chat template)."""
    if rendered.messages is None:
        return rendered.text
    from .modelio import ensure_chat_template

    ensure_chat_template(tok)
    return str(tok.apply_chat_template(rendered.messages, add_generation_prompt=True, tokenize=False))


# ---------------------------------------------------------------------------------------- generation


class _StopOnStrings:
    """Stop a row once its new text contains a stop string (the harness's stop-sequence criterion)."""

    def __init__(self, tok: Any, stops: Sequence[str], prompt_len: int) -> None:
        self.tok = tok
        self.stops = [s for s in stops if s]
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tok.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def generate(
    ctx: Context,
    model: Any,
    tok: Any,
    prompts_: list[str],
    add_special_tokens: bool = True,
    max_new_tokens: int | None = None,
    stops: Sequence[str] = (),
) -> list[str]:
    """Batched decoding with spec.generation (greedy when temperature is 0); new text only, cut at `stops`.

    Prompts longer than the context minus the new tokens lose their beginning (left truncation, as
    the harness does), never their question.
    """
    import torch
    from transformers import StoppingCriteriaList

    g = ctx.spec.generation
    new_tokens = max_new_tokens or g.max_new_tokens or prompts.DEFAULT_MAX_NEW_TOKENS
    kwargs: dict[str, Any] = {
        "max_new_tokens": new_tokens,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if g.temperature > 0:
        kwargs.update(do_sample=True, temperature=g.temperature, top_p=g.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    max_len = _max_len(tok, model, reserve=new_tokens)
    torch.manual_seed(0)
    out: list[str] = []
    batches = _batches(len(prompts_))
    old_side = getattr(tok, "truncation_side", "right")
    tok.truncation_side = "left"
    try:
        for b, idx in enumerate(batches):
            enc = tok(
                [prompts_[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
                add_special_tokens=add_special_tokens,
            )
            enc = {k: v.to(ctx.device) for k, v in enc.items()}
            width = enc["input_ids"].shape[1]
            criteria = StoppingCriteriaList([_StopOnStrings(tok, stops, width)]) if stops else None
            with torch.no_grad():
                gen = model.generate(**enc, **kwargs, stopping_criteria=criteria)
            out.extend(_cut(t, stops) for t in tok.batch_decode(gen[:, width:], skip_special_tokens=True))
            ctx.progress(b + 1, len(batches))
    finally:
        tok.truncation_side = old_side
    return out


def _special_tokens_for(tok: Any, texts: Sequence[str]) -> bool:
    """Whether the tokenizer should add its special tokens (not when the texts already start with BOS)."""
    bos = getattr(tok, "bos_token", None)
    return not (bos and texts and all(t.startswith(bos) for t in texts))


def _generation_pairs(ctx: Context, tok: Any, prompt: Prompt) -> tuple[list[str], list[str], bool]:
    """(prompts, references, add_special_tokens) from prompt/completion, question/answer or chat records."""
    keys = {k for r in ctx.records for k in r}
    if "messages" in keys:
        from .modelio import ensure_chat_template

        ensure_chat_template(tok)
        texts, refs = [], []
        for i, r in enumerate(ctx.records):
            msgs = list(r["messages"])
            if not msgs or msgs[-1]["role"] != "assistant":
                raise StageError(f"record {i}: the last chat message must be the assistant's reference answer")
            history = msgs[:-1]
            if prompt.system and not any(m["role"] == "system" for m in history):
                history = [{"role": "system", "content": prompt.system}, *history]
            texts.append(tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False))
            refs.append(str(msgs[-1]["content"]))
        return texts, refs, False
    if {"prompt", "completion"} <= keys or {"question", "answer"} <= keys:
        if prompt.legacy and {"prompt", "completion"} <= keys:
            return [str(r["prompt"]) for r in ctx.records], [str(r["completion"]) for r in ctx.records], True
        exemplars = _exemplars(ctx, prompt)
        texts = [_as_text(tok, prompts.render(prompt, r, ex)) for r, ex in zip(ctx.records, exemplars, strict=True)]
        refs = [prompts.target_text(prompt, r, i) for i, r in enumerate(ctx.records)]
        return texts, refs, _special_tokens_for(tok, texts)
    _need(ctx.records, ["prompt", "completion"], "generation")
    raise AssertionError("unreachable")


def eval_generation(ctx: Context, prompt: Prompt) -> Outcome:
    """Decode each prompt and compare with its reference (BLEU, NIST, ROUGE, exact match)."""
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "left")
    texts, refs, special = _generation_pairs(ctx, tok, prompt)
    outputs = generate(ctx, model, tok, texts, special, prompt.max_new_tokens, prompt.stops)
    preds = [p.strip() for p in outputs]
    refs = [r.strip() for r in refs]
    opts = ctx.spec.metric_options
    m = metrics.generation(preds, refs, ctx.wanted, opts)
    em = metrics.exact_match_options(opts)
    scores = [
        metrics.rouge_per_sample(pred, ref, opts.rouge.tokenizer, opts.rouge.use_stemmer)["rougeL"]
        for pred, ref in zip(preds, refs, strict=True)
    ]
    samples: list[Record] = [
        {
            "input": p[-500:],
            "reference": ref,
            "prediction": pred,
            "score": score,
            "exactMatch": metrics.normalize_answer(pred, **em) == metrics.normalize_answer(ref, **em),
            "contains": metrics.contains_one(pred, ref, **em),
        }
        for p, pred, ref, score in zip(texts, preds, refs, scores, strict=True)
    ]
    return Outcome(metrics=m, samples=samples, plot=lambda path: _plot_hist(path, scores, "ROUGE-L F1"))


# --------------------------------------------------------------------------------- log-likelihoods


def sequence_logprobs(
    ctx: Context, model: Any, seqs: list[list[int]], score_from: list[int]
) -> list[tuple[float, int]]:
    """(sum of log p(token | prefix), tokens scored) for tokens at positions >= score_from[i] (>= 1).

    The model sees each sequence without its last token (that token is only predicted), and the
    scored tokens' log-probabilities are summed in float32 over exactly their slice: the harness's
    computation, so equal inputs give equal sums.
    """
    import torch

    pad = 0
    out: list[tuple[float, int]] = []
    batches = _batches(len(seqs))
    for b, idx in enumerate(batches):
        width = max(len(seqs[i]) for i in idx)
        if width < 2:  # nothing to predict in this batch (single-token texts)
            out.extend((0.0, 0) for _ in idx)
            ctx.progress(b + 1, len(batches))
            continue
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(seqs[i])
            ids[row, :n] = torch.tensor(seqs[i])
            mask[row, :n] = 1
        with torch.no_grad():
            logits = model(
                input_ids=ids[:, :-1].to(ctx.device), attention_mask=mask[:, :-1].to(ctx.device)
            ).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        tok_lp = logp.gather(-1, ids[:, 1:].to(ctx.device).unsqueeze(-1)).squeeze(-1).cpu()
        for row, i in enumerate(idx):
            n = len(seqs[i])
            lo = max(score_from[i], 1) - 1  # target j+1 is predicted at j
            part = tok_lp[row, lo : n - 1]
            out.append((float(part.sum()), int(part.numel())))
        ctx.progress(b + 1, len(batches))
    return out


def _lm_texts(records: list[Record]) -> list[str]:
    keys = {k for r in records for k in r}
    if "text" in keys:
        return [str(r["text"]) for r in records]
    if {"prompt", "completion"} <= keys:
        return [str(r["prompt"]) + str(r["completion"]) for r in records]
    if "messages" in keys:
        return ["\n".join(str(m["content"]) for m in r["messages"]) for r in records]
    _need(records, ["text"], "language-modeling")
    raise AssertionError("unreachable")


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, score_from) windows over a text of n tokens: every token from the second on is scored
    exactly once. The first window predicts its tokens 1..window-1; each next one predicts the following
    `stride` tokens (at most window-1) with as much context before them as fits in the window."""
    if n_tokens <= window:
        return [(0, n_tokens, 1)]
    step = max(1, min(stride, window - 1))
    out = [(0, window, 1)]
    predicted = window
    while predicted < n_tokens:
        end = min(predicted + step, n_tokens)
        begin = end - window
        out.append((begin, end, predicted - begin))
        predicted = end
    return out


def eval_language_modeling(ctx: Context, prompt: Prompt | None = None) -> Outcome:
    """Corpus perplexity: exp(total NLL / tokens predicted), the first token of each text is context.

    Texts longer than the window are scored with a sliding window (spec.metricOptions.perplexity):
    nothing is truncated, each token is predicted once from up to window-1 tokens before it.
    """
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "right")
    texts = _lm_texts(ctx.records)
    opts = ctx.spec.metric_options.perplexity
    window = min(opts.max_length, _max_len(tok, model)) if opts.max_length else _max_len(tok, model)
    stride = max(1, min(opts.stride or window // 2, window - 1))
    seqs: list[list[int]] = []
    starts: list[int] = []
    owner: list[int] = []
    n_windows = 0
    for t_index, t in enumerate(texts):
        ids = list(tok(t)["input_ids"])
        wins = sliding_windows(len(ids), window, stride)
        n_windows += len(wins)
        for begin, end, score_from in wins:
            seqs.append(ids[begin:end])
            starts.append(score_from)
            owner.append(t_index)
    scored = sequence_logprobs(ctx, model, seqs, starts)
    per_text = [[0.0, 0] for _ in texts]
    for t_index, (lp, n) in zip(owner, scored, strict=True):
        per_text[t_index][0] += lp
        per_text[t_index][1] += n
    scores = [(float(lp), int(n)) for lp, n in per_text]
    total_nll = -math.fsum(lp for lp, _ in scores)
    n_tokens = sum(n for _, n in scores)
    if n_tokens == 0:
        raise StageError("no text with at least two tokens to score; check the evaluation split")
    samples: list[Record] = [
        {"input": t[:500], "tokens": n, "nll": -lp, "score": math.exp(-lp / n) if n else None}
        for t, (lp, n) in zip(texts, scores, strict=True)
    ]
    ppl = [math.exp(-lp / n) for lp, n in scores if n]
    return Outcome(
        metrics={"perplexity": metrics.perplexity(total_nll, n_tokens)},
        samples=samples,
        plot=lambda path: _plot_hist(path, ppl, "per-sample perplexity"),
        extra={"tokens": n_tokens, "totalNll": total_nll, "window": window, "stride": stride, "windows": n_windows},
    )


def choice_sequences(tok: Any, question: str, choices: Sequence[Any]) -> tuple[list[list[int]], list[int]]:
    """Token ids of the legacy prompt + option per option, and where the option's tokens start."""
    context = MC_PROMPT.format(question=question)
    seqs, starts = [], []
    for c in choices:
        ctx_ids, cont_ids = encode_pair(tok, context, " " + str(c).strip())
        seqs.append(ctx_ids + cont_ids)
        starts.append(max(min(len(ctx_ids), len(ctx_ids) + len(cont_ids) - 1), 1))
    return seqs, starts


def _exemplars(ctx: Context, prompt: Prompt) -> list[list[Record]]:
    """Few-shot exemplars of each evaluated record for this variant."""
    fs = prompt.few_shot
    if fs.shots == 0:
        return [[] for _ in ctx.records]
    pool = ctx.pools[fs.split]
    return prompts.exemplars_for(prompt, ctx.records, pool, same_split=fs.split == ctx.eval_split)


def eval_multiple_choice(ctx: Context, prompt: Prompt) -> Outcome:
    """Pick the option with the highest log-likelihood (acc) and per character (acc_norm); chain of thought:
    generate reasoning and read the letter it names."""
    _need(ctx.records, ["question", "choices", "answer"], "multiple-choice")
    golds: list[int] = []
    for i, r in enumerate(ctx.records):
        if len(list(r["choices"])) < 2:
            raise StageError(f"record {i}: multiple-choice needs at least 2 choices, got {len(list(r['choices']))}")
        if prompt.format == "lettered" and len(list(r["choices"])) > len(prompts.LETTERS):
            raise StageError(f"record {i}: lettered format supports at most 26 choices")
        golds.append(prompts.gold_index(r, i))
    if prompt.cot is not None:
        return _multiple_choice_cot(ctx, prompt, golds)
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "right")
    max_len = _max_len(tok, model)
    exemplars = _exemplars(ctx, prompt)
    seqs: list[list[int]] = []
    starts: list[int] = []
    spans: list[range] = []
    option_texts: list[list[str]] = []
    contexts: list[str] = []
    for r, ex in zip(ctx.records, exemplars, strict=True):
        context = _as_text(tok, prompts.render(prompt, r, ex))
        contexts.append(context)
        conts, options = prompts.continuations(prompt, r)
        option_texts.append(options)
        spans.append(range(len(seqs), len(seqs) + len(conts)))
        for cont in conts:
            ctx_ids, cont_ids = encode_pair(tok, context, cont)
            seq = ctx_ids + cont_ids
            cut = max(0, len(seq) - (max_len + 1))  # left-truncate like the harness: max_len inputs
            seqs.append(seq[cut:])
            starts.append(max(len(ctx_ids) - cut, 1))
    scores = sequence_logprobs(ctx, model, seqs, starts)
    preds: list[int] = []
    preds_norm: list[int] = []
    samples: list[Record] = []
    for r, span, gold, options, context in zip(ctx.records, spans, golds, option_texts, contexts, strict=True):
        lls = [scores[j][0] for j in span]
        pred = max(range(len(lls)), key=lls.__getitem__)
        normed = [ll / max(len(o), 1) for ll, o in zip(lls, options, strict=True)]
        pred_norm = max(range(len(normed)), key=normed.__getitem__)
        preds.append(pred)
        preds_norm.append(pred_norm)
        samples.append(
            {
                "input": context[-500:] if not prompt.legacy else str(r["question"])[:500],
                "choices": [str(c) for c in r["choices"]],
                "loglikelihoods": lls,
                "reference": gold,
                "prediction": pred,
                "predictionNorm": pred_norm,
                "score": float(pred == gold),
            }
        )
    n_choices = [len(span) for span in spans]
    chance = sum(1 / n for n in n_choices) / len(n_choices)
    m = {"accuracy": metrics.accuracy(golds, preds)}
    if "acc_norm" in ctx.wanted:
        m["acc_norm"] = metrics.accuracy(golds, preds_norm)
    return Outcome(
        metrics=m,
        samples=samples,
        plot=lambda path: _plot_hist(path, [float(p == g) for p, g in zip(preds, golds, strict=True)], "correct"),
        extra={"chanceAccuracy": chance},
    )


def _reason(ctx: Context, prompt: Prompt) -> tuple[list[str], list[str], list[str]]:
    """Chain of thought: (prompts, reasoning, text to extract the answer from) per record."""
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "left")
    exemplars = _exemplars(ctx, prompt)
    texts = [_as_text(tok, prompts.render(prompt, r, ex)) for r, ex in zip(ctx.records, exemplars, strict=True)]
    special = _special_tokens_for(tok, texts)
    outputs = generate(ctx, model, tok, texts, special, prompt.max_new_tokens, prompt.stops)
    answer_text = outputs
    if prompt.cot is not None and prompt.cot.answer_trigger:
        second = [prompts.maybe_delimit(t + o, prompt.cot.answer_trigger, " ") for t, o in zip(texts, outputs,
                                                                                                 strict=True)]
        answer_text = generate(ctx, model, tok, second, special, prompts.ANSWER_TRIGGER_TOKENS, prompt.stops)
    return texts, outputs, answer_text


def _multiple_choice_cot(ctx: Context, prompt: Prompt, golds: list[int]) -> Outcome:
    texts, outputs, answers = _reason(ctx, prompt)
    preds: list[int] = []
    samples: list[Record] = []
    for r, t, o, a, gold in zip(ctx.records, texts, outputs, answers, golds, strict=True):
        letter = prompts.extract_letter(prompt, a, len(list(r["choices"])))
        pred = prompts.LETTERS.index(letter) if letter else -1
        preds.append(pred)
        samples.append(
            {"input": t[-500:], "generated": o, "answerText": a, "choices": [str(c) for c in r["choices"]],
             "reference": gold, "prediction": pred, "score": float(pred == gold)}
        )
    chance = sum(1 / len(list(r["choices"])) for r in ctx.records) / len(ctx.records)
    return Outcome(
        metrics={"accuracy": sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds)},
        samples=samples,
        extra={"chanceAccuracy": chance},
    )


def _cut(text: str, stops: Sequence[str]) -> str:
    for s in stops:
        if not s:
            continue
        pos = text.find(s)
        if pos >= 0:
            text = text[:pos]
    return text


def eval_numeric_answer(ctx: Context, prompt: Prompt) -> Outcome:
    """Generate, compare the last number with the number after `####` (accuracy), and score the harness's
    GSM8K strict-match (`#### n`, or `The answer is n.` with chain of thought) and flexible-extract."""
    _need(ctx.records, ["question", "answer"], "numeric-answer")
    if prompt.legacy:
        model = _causal_lm(ctx)
        tok = _tokenizer(ctx, "left")
        texts = [NUMERIC_PROMPT.format(question=str(r["question"])) for r in ctx.records]
        outputs = [o.strip() for o in generate(ctx, model, tok, texts, True, prompt.max_new_tokens, prompt.stops)]
        answers = outputs
    else:
        texts, outputs, answers = _reason(ctx, prompt)
    golds_text = [str(r["answer"]) for r in ctx.records]
    final = [prompts.split_answer(a)[1] for a in golds_text]
    gold_nums = [metrics.reference_number(a) for a in golds_text]
    two_stage = prompt.cot is not None and bool(prompt.cot.answer_trigger)
    strict_pattern = prompts.numeric_strict_pattern(prompt)
    if two_stage and prompt.cot is not None and not prompt.cot.answer_pattern:
        strict_pattern = FIRST_NUMBER
    strict = [metrics.regex_extract(a, strict_pattern) for a in answers]
    flexible = [metrics.regex_extract(a, metrics.GSM8K_FLEXIBLE, -1) for a in answers]
    if prompt.legacy or (prompt.cot is None and not two_stage):
        pred_nums = [metrics.extract_number(a) for a in answers]
    else:  # the reasoning's stated answer, else its last number
        pred_nums = [
            metrics.extract_number(s) if s != metrics.INVALID else metrics.extract_number(a)
            for s, a in zip(strict, answers, strict=True)
        ]
    correct = [metrics.numbers_equal(p, g) for p, g in zip(pred_nums, gold_nums, strict=True)]
    m: dict[str, float] = {}
    if "accuracy" in ctx.wanted:
        m["accuracy"] = sum(correct) / len(correct)
    if "exact_match" in ctx.wanted:
        em = metrics.exact_match_options(ctx.spec.metric_options)
        m["exact_match"] = metrics.exact_match([o.strip() for o in outputs], final, **em)
    strict_ok = [metrics.gsm8k_match(s, g) for s, g in zip(strict, golds_text, strict=True)]
    flexible_ok = [metrics.gsm8k_match(f, g) for f, g in zip(flexible, golds_text, strict=True)]
    if "exact_match_strict" in ctx.wanted:
        m["exact_match_strict"] = sum(strict_ok) / len(strict_ok)
    if "exact_match_flexible" in ctx.wanted:
        m["exact_match_flexible"] = sum(flexible_ok) / len(flexible_ok)
    samples: list[Record] = [
        {
            "input": t[-500:], "generated": o, "prediction": pn, "reference": gn, "score": float(c),
            "strict": s, "flexible": f, "strictMatch": so, "flexibleMatch": fo,
        }
        for t, o, pn, gn, c, s, f, so, fo in zip(
            texts, outputs, pred_nums, gold_nums, correct, strict, flexible, strict_ok, flexible_ok, strict=True
        )
    ]
    return Outcome(metrics=m, samples=samples)


def _unprompted(fn: Callable[[Context], Outcome]) -> Callable[[Context, Prompt], Outcome]:
    return lambda ctx, _prompt: fn(ctx)


EVALUATORS: dict[EvalTask, Callable[[Context, Prompt], Outcome]] = {
    EvalTask.CLASSIFICATION: _unprompted(eval_classification),
    EvalTask.REGRESSION: _unprompted(eval_regression),
    EvalTask.GENERATION: eval_generation,
    EvalTask.LANGUAGE_MODELING: eval_language_modeling,
    EvalTask.MULTIPLE_CHOICE: eval_multiple_choice,
    EvalTask.NUMERIC_ANSWER: eval_numeric_answer,
}


# ------------------------------------------------------------------------------------------- plots


def _plot_confusion(path: Path, y_true: list[int], y_pred: list[int], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(names))))
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(names), 1.2 + 0.6 * len(names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def _plot_hist(path: Path, values: list[float], label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=min(20, max(1, len(values))))
    ax.set_xlabel(label)
    ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------------- run


def check_thresholds(
    values: dict[str, float],
    thresholds: list[Threshold],
    variants: dict[str, dict[str, float]] | None = None,
) -> tuple[list[Record], list[str]]:
    """Each threshold with its value and verdict, and the one-line descriptions of those that failed.

    `values` are the first (default) variant's metrics; a threshold naming another variant reads
    `variants[name]`. With several variants the descriptions name the variant: `accuracy[five-shot] ...`.
    """
    rows: list[Record] = []
    failed: list[str] = []
    named = variants is not None and len(variants) > 1
    default = next(iter(variants)) if variants else None
    for t in thresholds:
        name = t.metric.value
        variant = t.variant or default
        source = variants.get(variant or "", {}) if variants and t.variant else values
        value = source.get(name)
        ok = value is not None and not math.isnan(value) and t.passes(value)
        row: Record = {"metric": name, "min": t.min, "max": t.max, "value": value, "passed": ok}
        if variant is not None and variants is not None:
            row["variant"] = variant
        rows.append(row)
        if not ok:
            bound = " and ".join(
                b for b in (f">= {t.min:g}" if t.min is not None else "", f"<= {t.max:g}" if t.max is not None else "")
                if b
            )
            got = "missing" if value is None else f"{value:.6g}"
            label = f"{name}[{variant}]" if named else name
            failed.append(f"{label} {got} (want {bound})")
    return rows, failed


def _pools(spec: EvaluationSpec, data_uri: str) -> dict[str, list[Record]]:
    """Records of every split the prompt variants draw exemplars from (the evaluated split unabridged by
    maxSamples)."""
    out: dict[str, list[Record]] = {}
    for v in spec.prompts or []:
        split = v.few_shot.split
        if v.few_shot.shots and split not in out:
            out[split] = dataio.read_split_records(data_uri, split)
            if not out[split]:
                raise StageError(
                    f"prompt variant {v.name!r} draws exemplars from split {split!r}, which is empty; set "
                    "fewShot.split to a split the Dataset fills",
                    reason="NotEnoughExemplars",
                )
    return out


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Evaluate the model input on the dataset input's split, once per prompt variant, and write the report."""
    evaluation = cast(Evaluation, config.typed())
    spec = evaluation.spec
    for key in ("model", "dataset"):
        if key not in config.inputs:
            raise StageError(f"input {key!r} was not resolved; check spec.{key}", reason="DependencyMissing")

    data_uri = config.inputs["dataset"].uri
    records = dataio.read_split_records(data_uri, spec.dataset.split)
    if spec.max_samples is not None:
        records = records[: spec.max_samples]
    if not records:
        raise StageError(f"split {spec.dataset.split!r} of {data_uri} is empty; nothing to evaluate")
    _need(records, REQUIRED_COLUMNS.get(spec.task_type, ()), spec.task_type.value)
    if spec.task_type == EvalTask.GENERATION:
        keys = {k for r in records for k in r}
        if not ({"prompt", "completion"} <= keys or {"question", "answer"} <= keys or "messages" in keys):
            _need(records, ["prompt", "completion"], "generation")
    variants = prompts.resolve(spec)
    for v in variants:
        prompts.validate_variant(v, records)
    pools = _pools(spec, data_uri)
    from .modelio import model_location  # imports torch: only once the data is known to fit

    model_loc = model_location(config.inputs["model"].uri)
    ctx = Context(
        spec=spec,
        records=records,
        model_location=model_loc,
        tokenizer_location=model_location(spec.tokenizer.uri) if spec.tokenizer.uri else model_loc,
        reporter=reporter,
        device=_device(),
        wanted=[m.value for m in spec.metrics],
        pools=pools,
        eval_split=spec.dataset.split,
    )
    reporter.update(step=0, total_steps=1, force=True)
    outcomes: dict[str, Outcome] = {}
    for v in variants:
        outcomes[v.name] = EVALUATORS[spec.task_type](ctx, v)
    table = {name: {k: float(x) for k, x in o.metrics.items()} for name, o in outcomes.items()}
    first = variants[0].name
    outcome = outcomes[first]
    values = table[first]
    prompted = bool(spec.prompts)
    rows, failed = check_thresholds(values, spec.thresholds or [], table if prompted else None)
    passed = not failed
    report_uri = f"{config.output_uri.rstrip('/')}/report.json"
    report = {
        "taskType": spec.task_type.value,
        "model": config.inputs["model"].to_wire(),
        "dataset": config.inputs["dataset"].to_wire() | {"split": spec.dataset.split},
        "sampleCount": len(records),
        "metrics": values,
        "thresholds": rows,
        "passed": passed,
        "failedThresholds": failed,
        "config": spec.to_wire(),
        **outcome.extra,
    }
    rows_by_variant = [{"name": name, "metrics": vals} for name, vals in table.items()]  # ordered, unlike a map
    if prompted:
        report["variants"] = rows_by_variant
        report["variantDetails"] = {name: o.extra for name, o in outcomes.items()}
    with dataio.staged_output(config.output_uri) as out:
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        with (out / "samples.jsonl").open("w") as fh:
            i = 0
            for name, o in outcomes.items():
                for record_index, s in enumerate(o.samples):
                    extra = {"variant": name, "record": record_index} if prompted else {}
                    fh.write(json.dumps({"index": i, **extra, **s}, sort_keys=True, default=str) + "\n")
                    i += 1
        if outcome.plot is not None:
            with contextlib.suppress(ImportError):  # matplotlib is optional in the trainer image
                outcome.plot(out / "plot.png")
        if dataio.is_local(config.output_uri):
            artifact = artifact_for(config.output_uri)
            write_lineage(config, artifact)
        else:
            from kubeforge.api.v1alpha1.status import Artifact

            digest, size = digest_path(out)
            artifact = Artifact(uri=config.output_uri, digest=digest, size_bytes=size)
            write_lineage(config.model_copy(update={"output_uri": str(out)}), artifact)
    reporter.update(step=1, total_steps=1, force=True)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
    if prompted and len(table) > 1:
        shown = "; ".join(
            f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(vals.items())) for name, vals in table.items()
        )
    verdict = "passed" if passed else "failed thresholds: " + "; ".join(failed)
    details: dict[str, Any] = {
        "passed": passed, "failedThresholds": failed, "sampleCount": len(records), "reportUri": report_uri,
    }
    if prompted:
        details["variants"] = rows_by_variant
    return StageResult(
        succeeded=True,
        reason="Completed",
        message=f"{spec.task_type.value} on {len(records)} samples: {shown}; {verdict}"[:1000],
        artifact=artifact,
        lineage=lineage_of(config),
        metrics=values,
        details=details,
    )
