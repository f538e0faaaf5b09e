"""Held-out reward of an online RL policy, measured before and after training (RLHFJob metrics).

The same held-out prompts (the Dataset's spec.dataset.evalSplit, else validation or test: never the
training split), the same reward (reward model and/or functions, weighted exactly as during training)
and greedy decoding of at most spec.generation.maxCompletionLength tokens, so `reward_after -
reward_before` is the policy's improvement and not sampling noise. Metrics: `reward_before`,
`reward_after`, `reward_gain`, `heldout_prompts`, and with a reward model plus functions the model's
own share `reward_model_before` / `reward_model_after`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from kubeforge.api.v1alpha1.rlhfjob import RLHFJobSpec
from kubeforge.stage import StageConfig

from .rewards import REFERENCE_COLUMN, completion_text
from .stagecommon import read_split

MAX_PROMPTS = 64  # the first N held-out prompts (deterministic order): enough for a mean, cheap on a CPU
BATCH = 16


@dataclass
class RewardSetup:
    """The reward as the trainer sees it: callables or sequence-classification models, weights, tokenizers."""

    funcs: list[Any]
    weights: list[float]
    tokenizers: list[Any]
    samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def mixed(self) -> bool:
        """A reward model plus at least one other reward (the model's own score is then worth reporting)."""
        import torch

        return len(self.funcs) > 1 and any(isinstance(f, torch.nn.Module) for f in self.funcs)


def heldout_split(spec: RLHFJobSpec) -> list[str]:
    """Candidate held-out splits in order of preference, excluding the training split."""
    order = [spec.dataset.eval_split, "validation", "test"]
    out: list[str] = []
    for s in order:
        if s and s != spec.dataset.split and s not in out:
            out.append(s)
    return out


def heldout_prompts(config: StageConfig, spec: RLHFJobSpec, to_prompts: Any) -> tuple[str, Any] | None:
    """(split, prompts dataset) of the first usable held-out split; None when the Dataset has none."""
    for split in heldout_split(spec):
        ds = read_split(config, split, required=False)
        if ds is None or not ({"prompt"} <= set(ds.column_names) or {"messages"} <= set(ds.column_names)):
            continue
        cols = ("prompt",) if "prompt" in ds.column_names else ("messages",)
        ds = to_prompts(ds, cols)
        return split, ds.select(range(min(MAX_PROMPTS, len(ds))))
    return None


def _conversational(prompt: Any) -> bool:
    return isinstance(prompt, list)


def _generate(model: Any, tok: Any, prompts: list[Any], max_new_tokens: int) -> list[str]:
    """Greedy completions, decoded as TRL decodes them (special tokens skipped)."""
    import torch

    if _conversational(prompts[0]):
        texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        enc = tok(text=texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    else:
        enc = tok(text=prompts, padding=True, padding_side="left", return_tensors="pt")
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    done = out[:, enc["input_ids"].shape[1] :]
    return [str(t) for t in tok.batch_decode(done, skip_special_tokens=True)]


def _model_scores(rm: Any, rm_tok: Any, prompts: list[Any], completions: list[Any]) -> list[float]:
    """A reward model's score of prompt + completion, tokenised as TRL's GRPO trainer does."""
    import torch

    if _conversational(prompts[0]):
        texts = [rm_tok.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions, strict=True)]
    else:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
    enc = rm_tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    device = next(rm.parameters()).device
    with torch.inference_mode():
        logits = rm(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0]
    return [float(x) for x in logits.float().cpu()]


def mean_reward(
    model: Any, tok: Any, ds: Any, setup: RewardSetup, max_new_tokens: int, keep_samples: int = 0
) -> tuple[float, float | None]:
    """(weighted mean reward, mean of the reward model's own score or None) of greedy completions on `ds`."""
    import torch

    was_training = model.training
    model.eval()
    totals: list[float] = []
    model_scores: list[float] = []
    samples: list[dict[str, str]] = []
    try:
        for start in range(0, len(ds), BATCH):
            rows = ds.select(range(start, min(start + BATCH, len(ds))))
            prompts = list(rows["prompt"])
            texts = _generate(model, tok, prompts, max_new_tokens)
            completions: list[Any] = (
                [[{"role": "assistant", "content": t}] for t in texts] if _conversational(prompts[0]) else texts
            )
            columns = {REFERENCE_COLUMN: list(rows[REFERENCE_COLUMN])} if REFERENCE_COLUMN in rows.column_names else {}
            batch = [0.0] * len(prompts)
            for fn, weight, rtok in zip(setup.funcs, setup.weights, setup.tokenizers, strict=True):
                if isinstance(fn, torch.nn.Module):
                    scores = _model_scores(fn, rtok, prompts, completions)
                    model_scores += scores
                else:
                    scores = [float(s) for s in fn(prompts=prompts, completions=completions, **columns)]
                batch = [b + weight * s for b, s in zip(batch, scores, strict=True)]
            totals += batch
            for p, c, r in zip(prompts, completions, batch, strict=True):
                if len(samples) < keep_samples:
                    samples.append(
                        {"prompt": completion_text(p), "completion": completion_text(c), "reward": f"{r:.3f}"}
                    )
    finally:
        if was_training:
            model.train()
    setup.samples = samples
    rm_mean = sum(model_scores) / len(model_scores) if model_scores else None
    return sum(totals) / len(totals), rm_mean


def log_samples(title: str, mean: float, samples: list[dict[str, str]]) -> None:
    """A few held-out completions in the stage log, so a reader sees what the reward measured."""
    print(f"{title}: mean reward {mean:.4f}", file=sys.stderr, flush=True)
    for s in samples:
        print(f"  {s['prompt']!r} -> {s['completion']!r} (reward {s['reward']})", file=sys.stderr, flush=True)


def before_after_metrics(
    before: tuple[float, float | None] | None, after: tuple[float, float | None] | None, n: int, mixed: bool
) -> dict[str, float | None]:
    """The metrics of one before/after measurement (all None when it was not measured)."""
    if before is None or after is None:
        return {}
    out: dict[str, float | None] = {
        "heldout_prompts": float(n),
        "reward_before": before[0],
        "reward_after": after[0],
        "reward_gain": after[0] - before[0],
    }
    if mixed:
        out["reward_model_before"] = before[1]
        out["reward_model_after"] = after[1]
    return out
