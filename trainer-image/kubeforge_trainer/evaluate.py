"""The `evaluate` stage: run a model over a Dataset split, compute metrics, apply thresholds.

The stage succeeds whenever the evaluation ran; whether the model is good enough is `passed` (and
`failedThresholds`) in the result details, which the operator turns into the `Passed` condition
that promotion gates read. Outputs: `report.json` (metrics, thresholds, config), `samples.jsonl`
(one line per sample) and, when matplotlib is installed, `plot.png`.

Task types and the records they read:
- classification: `text`, `label` (name or id; mapped through the model's label2id) → argmax.
- regression: `text`, `value` → the single regression logit.
- generation: `prompt`, `completion` (or chat `messages`, last assistant turn as reference).
- language-modeling: `text` (or prompt+completion) → perplexity = exp(mean token NLL).
- multiple-choice: `question`, `choices`, `answer` (index or letter) → summed option log-likelihood.
- numeric-answer: `question`, `answer` (`... #### 42`) → generate, compare the last number.
"""

from __future__ import annotations

import contextlib
import json
import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubeforge.api.v1alpha1.evaluation import EvalTask, Evaluation, EvaluationSpec, Threshold
from kubeforge.stage import StageConfig, StageResult

from . import dataio, metrics
from .runtime import ProgressReporter, StageError, artifact_for, digest_path, lineage_of, write_lineage

Record = dict[str, Any]
BATCH_SIZE = 16
MAX_INPUT_TOKENS = 2048
# Prompt formats for MMLU- and GSM8K-style records (zero-shot, the common lm-eval-harness shape).
MC_PROMPT = "Question: {question}\nAnswer:"
NUMERIC_PROMPT = "Question: {question}\nAnswer:"
NUMERIC_STOPS = ("\nQuestion:", "Question:", "\n\n")
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

    def progress(self, done: int, total: int) -> None:
        """Report batches done as steps."""
        self.reporter.update(step=done, total_steps=max(total, 1))


# ---------------------------------------------------------------------------------------- loading


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _tokenizer(ctx: Context, padding_side: str) -> Any:
    from .modelio import load_tokenizer

    tok = load_tokenizer(ctx.tokenizer_location, trust_remote_code=ctx.spec.model.trust_remote_code)
    tok.padding_side = padding_side
    return tok


def _causal_lm(ctx: Context) -> Any:
    from .modelio import load_causal_lm

    model = load_causal_lm(ctx.model_location, merge=True, trust_remote_code=ctx.spec.model.trust_remote_code)
    return model.to(ctx.device).eval()


def _classifier(ctx: Context) -> Any:
    """A sequence-classification model (a PEFT adapter is merged into its base)."""
    from transformers import AutoModelForSequenceClassification

    from .modelio import ADAPTER_CONFIG

    loc = ctx.model_location
    trust = ctx.spec.model.trust_remote_code
    try:
        if (Path(loc) / ADAPTER_CONFIG).is_file() and not (Path(loc) / "config.json").is_file():
            from peft import AutoPeftModelForSequenceClassification

            model: Any = AutoPeftModelForSequenceClassification.from_pretrained(loc).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(loc, trust_remote_code=trust)
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


def _batches(n: int, size: int = BATCH_SIZE) -> list[range]:
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


# ---------------------------------------------------------------------------------------- generation


def generate(ctx: Context, model: Any, tok: Any, prompts: list[str], add_special_tokens: bool = True) -> list[str]:
    """Batched decoding with spec.generation (greedy when temperature is 0); new text only."""
    import torch

    g = ctx.spec.generation
    kwargs: dict[str, Any] = {
        "max_new_tokens": g.max_new_tokens,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if g.temperature > 0:
        kwargs.update(do_sample=True, temperature=g.temperature, top_p=g.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    max_len = _max_len(tok, model, reserve=g.max_new_tokens)
    torch.manual_seed(0)
    out: list[str] = []
    batches = _batches(len(prompts))
    for b, idx in enumerate(batches):
        enc = tok(
            [prompts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
            add_special_tokens=add_special_tokens,
        )
        enc = {k: v.to(ctx.device) for k, v in enc.items()}
        with torch.no_grad():
            gen = model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1] :]
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
        ctx.progress(b + 1, len(batches))
    return out


def _generation_pairs(ctx: Context, tok: Any) -> tuple[list[str], list[str], bool]:
    """(prompts, references, add_special_tokens) from prompt/completion or chat records."""
    keys = {k for r in ctx.records for k in r}
    if {"prompt", "completion"} <= keys:
        return [str(r["prompt"]) for r in ctx.records], [str(r["completion"]) for r in ctx.records], True
    if "messages" in keys:
        from .modelio import ensure_chat_template

        ensure_chat_template(tok)
        prompts, refs = [], []
        for i, r in enumerate(ctx.records):
            msgs = list(r["messages"])
            if not msgs or msgs[-1]["role"] != "assistant":
                raise StageError(f"record {i}: the last chat message must be the assistant's reference answer")
            prompts.append(tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False))
            refs.append(str(msgs[-1]["content"]))
        return prompts, refs, False
    _need(ctx.records, ["prompt", "completion"], "generation")
    raise AssertionError("unreachable")


def eval_generation(ctx: Context) -> Outcome:
    """Decode each prompt and compare with its reference (BLEU, NIST, ROUGE, exact match)."""
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "left")
    prompts, refs, special = _generation_pairs(ctx, tok)
    preds = [p.strip() for p in generate(ctx, model, tok, prompts, special)]
    refs = [r.strip() for r in refs]
    m = metrics.generation(preds, refs, ctx.wanted)
    scores = [metrics.rouge_per_sample(pred, ref)["rougeL"] for pred, ref in zip(preds, refs, strict=True)]
    samples: list[Record] = [
        {
            "input": p[-500:],
            "reference": ref,
            "prediction": pred,
            "score": score,
            "exactMatch": metrics.normalize_answer(pred) == metrics.normalize_answer(ref),
        }
        for p, pred, ref, score in zip(prompts, preds, refs, scores, strict=True)
    ]
    return Outcome(metrics=m, samples=samples, plot=lambda path: _plot_hist(path, scores, "ROUGE-L F1"))


# --------------------------------------------------------------------------------- log-likelihoods


def sequence_logprobs(
    ctx: Context, model: Any, seqs: list[list[int]], score_from: list[int]
) -> list[tuple[float, int]]:
    """(sum of log p(token | prefix), tokens scored) for tokens at positions >= score_from[i] (>= 1)."""
    import torch

    pad = 0
    out: list[tuple[float, int]] = []
    batches = _batches(len(seqs))
    for b, idx in enumerate(batches):
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        scored = torch.zeros((len(idx), width - 1), dtype=torch.bool)
        for row, i in enumerate(idx):
            n = len(seqs[i])
            ids[row, :n] = torch.tensor(seqs[i])
            mask[row, :n] = 1
            scored[row, max(score_from[i], 1) - 1 : n - 1] = True  # target j+1 is predicted at j
        with torch.no_grad():
            logits = model(input_ids=ids.to(ctx.device), attention_mask=mask.to(ctx.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tok_lp = logp.gather(-1, ids[:, 1:].to(ctx.device).unsqueeze(-1)).squeeze(-1).cpu()
        tok_lp = tok_lp.masked_fill(~scored, 0.0)
        for row in range(len(idx)):
            out.append((float(tok_lp[row].sum()), int(scored[row].sum())))
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


def eval_language_modeling(ctx: Context) -> Outcome:
    """Corpus perplexity: exp(total NLL / tokens predicted), the first token of each text is context."""
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "right")
    texts = _lm_texts(ctx.records)
    max_len = _max_len(tok, model)
    seqs = [tok(t, truncation=True, max_length=max_len)["input_ids"] for t in texts]
    scores = sequence_logprobs(ctx, model, seqs, [1] * len(seqs))
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
        extra={"tokens": n_tokens, "totalNll": total_nll},
    )


def answer_index(answer: Any, choices: Sequence[Any], index: int) -> int:
    """The gold option: an index, a letter (A, B, ...), a digit string, or the option's text."""
    n = len(choices)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n:
        return answer
    s = str(answer).strip()
    if len(s) == 1 and s.upper() in string.ascii_uppercase[:n]:
        return string.ascii_uppercase.index(s.upper())
    if s.isdigit() and int(s) < n:
        return int(s)
    texts = [str(c).strip() for c in choices]
    if s in texts:
        return texts.index(s)
    raise StageError(
        f"record {index}: answer {answer!r} is neither an index 0..{n - 1}, a letter "
        f"A..{string.ascii_uppercase[min(n, 26) - 1]} nor one of the choices",
        reason="InvalidData",
    )


def choice_sequences(tok: Any, question: str, choices: Sequence[Any]) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt+option per option, and where the option's tokens start (lm-eval-harness split)."""
    context = MC_PROMPT.format(question=question)
    ctx_ids = tok(context)["input_ids"]
    seqs, starts = [], []
    for c in choices:
        whole = tok(context + " " + str(c).strip())["input_ids"]
        start = min(len(ctx_ids), len(whole) - 1)
        seqs.append(whole)
        starts.append(max(start, 1))
    return seqs, starts


def eval_multiple_choice(ctx: Context) -> Outcome:
    """Pick the option with the highest summed log-likelihood given the question."""
    _need(ctx.records, ["question", "choices", "answer"], "multiple-choice")
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "right")
    seqs: list[list[int]] = []
    starts: list[int] = []
    spans: list[range] = []
    golds: list[int] = []
    for i, r in enumerate(ctx.records):
        choices = list(r["choices"])
        if len(choices) < 2:
            raise StageError(f"record {i}: multiple-choice needs at least 2 choices, got {len(choices)}")
        golds.append(answer_index(r["answer"], choices, i))
        s, st = choice_sequences(tok, str(r["question"]), choices)
        spans.append(range(len(seqs), len(seqs) + len(s)))
        seqs += s
        starts += st
    scores = sequence_logprobs(ctx, model, seqs, starts)
    preds: list[int] = []
    samples: list[Record] = []
    for r, span, gold in zip(ctx.records, spans, golds, strict=True):
        lls = [scores[j][0] for j in span]
        pred = max(range(len(lls)), key=lls.__getitem__)
        preds.append(pred)
        samples.append(
            {
                "input": str(r["question"])[:500],
                "choices": [str(c) for c in r["choices"]],
                "loglikelihoods": lls,
                "reference": gold,
                "prediction": pred,
                "score": float(pred == gold),
            }
        )
    n_choices = [len(span) for span in spans]
    chance = sum(1 / n for n in n_choices) / len(n_choices)
    return Outcome(
        metrics={"accuracy": metrics.accuracy(golds, preds)},
        samples=samples,
        plot=lambda path: _plot_hist(path, [float(p == g) for p, g in zip(preds, golds, strict=True)], "correct"),
        extra={"chanceAccuracy": chance},
    )


def _cut(text: str, stops: Sequence[str]) -> str:
    for s in stops:
        pos = text.find(s)
        if pos >= 0:
            text = text[:pos]
    return text


def eval_numeric_answer(ctx: Context) -> Outcome:
    """Generate, take the last number, compare with the number after `####`."""
    _need(ctx.records, ["question", "answer"], "numeric-answer")
    model = _causal_lm(ctx)
    tok = _tokenizer(ctx, "left")
    prompts = [NUMERIC_PROMPT.format(question=str(r["question"])) for r in ctx.records]
    outputs = [_cut(o, NUMERIC_STOPS).strip() for o in generate(ctx, model, tok, prompts)]
    golds_text = [str(r["answer"]) for r in ctx.records]
    final = [(a.rsplit("####", 1)[1] if "####" in a else a).strip() for a in golds_text]
    pred_nums = [metrics.extract_number(o) for o in outputs]
    gold_nums = [metrics.reference_number(a) for a in golds_text]
    correct = [metrics.numbers_equal(p, g) for p, g in zip(pred_nums, gold_nums, strict=True)]
    m: dict[str, float] = {}
    if "accuracy" in ctx.wanted:
        m["accuracy"] = sum(correct) / len(correct)
    if "exact_match" in ctx.wanted:
        m["exact_match"] = metrics.exact_match(outputs, final)
    samples: list[Record] = [
        {"input": p[-500:], "generated": o, "prediction": pn, "reference": gn, "score": float(c)}
        for p, o, pn, gn, c in zip(prompts, outputs, pred_nums, gold_nums, correct, strict=True)
    ]
    return Outcome(metrics=m, samples=samples)


EVALUATORS: dict[EvalTask, Callable[[Context], Outcome]] = {
    EvalTask.CLASSIFICATION: eval_classification,
    EvalTask.REGRESSION: eval_regression,
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


def check_thresholds(values: dict[str, float], thresholds: list[Threshold]) -> tuple[list[Record], list[str]]:
    """Each threshold with its value and verdict, and the one-line descriptions of those that failed."""
    rows: list[Record] = []
    failed: list[str] = []
    for t in thresholds:
        name = t.metric.value
        value = values.get(name)
        ok = value is not None and not math.isnan(value) and t.passes(value)
        rows.append({"metric": name, "min": t.min, "max": t.max, "value": value, "passed": ok})
        if not ok:
            bound = " and ".join(
                b for b in (f">= {t.min:g}" if t.min is not None else "", f"<= {t.max:g}" if t.max is not None else "")
                if b
            )
            got = "missing" if value is None else f"{value:.6g}"
            failed.append(f"{name} {got} (want {bound})")
    return rows, failed


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Evaluate the model input on the dataset input's split and write the report."""
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
    )
    reporter.update(step=0, total_steps=1, force=True)
    outcome = EVALUATORS[spec.task_type](ctx)
    values = {k: float(v) for k, v in outcome.metrics.items()}
    rows, failed = check_thresholds(values, spec.thresholds or [])
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
    with dataio.staged_output(config.output_uri) as out:
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        with (out / "samples.jsonl").open("w") as fh:
            for i, s in enumerate(outcome.samples):
                fh.write(json.dumps({"index": i, **s}, sort_keys=True, default=str) + "\n")
        if outcome.plot is not None:
            with contextlib.suppress(ImportError):  # matplotlib is optional in the trainer image
                outcome.plot(out / "plot.png")
        if dataio.is_local(config.output_uri):
            artifact = artifact_for(config.output_uri)
            write_lineage(config, artifact)
        else:
            from kubeforge.api.v1alpha1.common import Artifact

            digest, size = digest_path(out)
            artifact = Artifact(uri=config.output_uri, digest=digest, size_bytes=size)
            write_lineage(config.model_copy(update={"output_uri": str(out)}), artifact)
    reporter.update(step=1, total_steps=1, force=True)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
    verdict = "passed" if passed else "failed thresholds: " + "; ".join(failed)
    return StageResult(
        succeeded=True,
        reason="Completed",
        message=f"{spec.task_type.value} on {len(records)} samples: {shown}; {verdict}"[:1000],
        artifact=artifact,
        lineage=lineage_of(config),
        metrics=values,
        details={"passed": passed, "failedThresholds": failed, "sampleCount": len(records), "reportUri": report_uri},
    )
