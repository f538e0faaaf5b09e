"""HF TrainerCallback that feeds runtime.ProgressReporter (progress.json + Prometheus gauges)."""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .runtime import ProgressReporter


class ProgressCallback(TrainerCallback):
    """Step, total, loss, learning rate, epoch and tokens/s from the Trainer's own numbers.

    Only the main process reports; the reporter throttles file writes itself. Tokens come from the
    TRL `num_tokens` log entry (SFT/DPO/GRPO/RLOO/reward) or the Trainer's `num_input_tokens_seen`.
    """

    def __init__(self, reporter: ProgressReporter) -> None:
        self.reporter = reporter
        self.history: list[dict[str, float]] = []
        self._t0: float | None = None
        self._tokens0: float | None = None
        self.tokens_per_second: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == 0:  # fresh run: tokens are counted from zero now
            self._t0, self._tokens0 = time.monotonic(), 0.0
        if state.is_world_process_zero:
            self.reporter.update(force=True, step=state.global_step, total_steps=state.max_steps, epoch=state.epoch)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.reporter.update(step=state.global_step, total_steps=state.max_steps, epoch=state.epoch)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.history.append({"step": float(state.global_step), **numeric})
        tokens = numeric.get("num_tokens", float(state.num_input_tokens_seen or 0))
        now = time.monotonic()
        if "loss" in numeric:  # a training log (not eval/final summary)
            if self._t0 is None or self._tokens0 is None:
                self._t0, self._tokens0 = now, tokens
            elif now > self._t0 and tokens > self._tokens0:
                self.tokens_per_second = (tokens - self._tokens0) / (now - self._t0)
        if not state.is_world_process_zero:
            return
        loss = numeric.get("loss")
        self.reporter.update(
            force=True,
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=state.epoch,
            loss=loss if loss is not None and math.isfinite(loss) else None,
            learning_rate=numeric.get("learning_rate"),
            tokens_per_second=round(self.tokens_per_second, 2) if self.tokens_per_second else None,
        )

    def last(self, key: str) -> float | None:
        """Latest logged value of `key` (e.g. `reward`, `eval_loss`)."""
        for entry in reversed(self.history):
            if key in entry:
                return entry[key]
        return None

    def mean(self, key: str) -> float | None:
        """Mean of every logged value of `key` over the run."""
        values = [e[key] for e in self.history if key in e and math.isfinite(e[key])]
        return sum(values) / len(values) if values else None
