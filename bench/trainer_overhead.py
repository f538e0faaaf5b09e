"""Overhead of the Kubeforge sft stage vs a plain TRL SFTTrainer script with identical settings.

Both train the same tiny LLaMA on the same prompt/completion data, in one process, alternating
(stage, plain, stage, plain, ...) so machine noise hits both alike. Throughput is tokens/s over the
`SFTTrainer.train()` call (TRL's own `num_tokens` / seconds in that call, timed by the same wrapper on
both sides), so model/data loading is excluded for both; `wall` includes it. Prints a table and one JSON line.

    python bench/trainer_overhead.py [--steps 200] [--repeats 3] [--hidden 128] [--json-out f.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "ml"))


def make_assets(work: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    """A tiny LLaMA + tokenizer and an instruction Dataset dir."""
    import torch
    from conftest import corpus, write_dataset  # tests/ml/conftest.py: the same fixtures the ml tier uses
    from kubeforge_trainer.modelio import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = train_tokenizer(corpus(), vocab_size=400)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model_dir = work / "model"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = write_dataset(work / "data", "instruction", {"train": 512, "validation": 0, "test": 0})
    return model_dir, data


def spec(model_dir: Path, steps: int, batch: int) -> dict[str, Any]:
    """The TrainingJob spec both sides mirror."""
    return {
        "method": "sft",
        "model": {"uri": str(model_dir)},
        "dataset": {"name": "bench", "evalSplit": None},
        "precision": "fp32",
        "hyperparameters": {
            "learningRate": 1e-3,
            "maxSteps": steps,
            "batchSize": batch,
            "maxLength": 64,
            "loggingSteps": 10,
            "seed": 0,
        },
        "checkpointing": {"intervalSteps": 10 * steps},  # no checkpoint inside the timed window on either side
    }


def run_stage(work: Path, model_dir: Path, data: Path, steps: int, batch: int, i: int) -> dict[str, float]:
    """The real stage: `kubeforge_trainer.train.run` with a StageConfig, reporter and callback."""
    from conftest import stage_config
    from kubeforge_trainer import train
    from kubeforge_trainer.runtime import ProgressReporter

    out = work / f"stage-{i}"
    config = stage_config("TrainingJob", spec(model_dir, steps, batch), out, {"dataset": data})
    t0 = time.perf_counter()
    result = train.run(config, ProgressReporter(config))
    wall = time.perf_counter() - t0
    assert result.succeeded, result.message
    return _throughput(wall)


def run_plain(work: Path, model_dir: Path, data: Path, steps: int, batch: int, i: int) -> dict[str, float]:
    """What a user would write by hand with TRL: same model, data, hyperparameters."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out = work / f"plain-{i}"
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ds = Dataset.from_parquet(str(data / "train.parquet"))
    args = SFTConfig(
        output_dir=str(out),
        learning_rate=1e-3,
        max_steps=steps,
        per_device_train_batch_size=batch,
        max_length=64,
        logging_steps=10,
        seed=0,
        data_seed=0,
        save_strategy="steps",
        save_steps=10 * steps,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    wall = time.perf_counter() - t0
    return _throughput(wall)


LAST: dict[str, Any] = {}


def time_train_calls() -> None:
    """Wrap SFTTrainer.train once: both sides are timed by the same code around the same call."""
    from trl.trainer.sft_trainer import SFTTrainer

    inner = SFTTrainer.train

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = inner(self, *args, **kwargs)
        LAST["seconds"] = time.perf_counter() - t0
        LAST["tokens"] = max(float(e["num_tokens"]) for e in self.state.log_history if "num_tokens" in e)
        return out

    SFTTrainer.train = timed  # type: ignore[method-assign]


def _throughput(wall: float) -> dict[str, float]:
    tokens, secs = float(LAST["tokens"]), float(LAST["seconds"])
    return {"tokens": tokens, "train_seconds": secs, "tokens_per_second": tokens / secs, "wall": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", type=Path)
    a = p.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    with tempfile.TemporaryDirectory(prefix="kf-bench-") as tmp:
        work = Path(tmp)
        model_dir, data = make_assets(work, a.hidden, a.layers)
        time_train_calls()
        run_plain(work, model_dir, data, 10, a.batch, -1)  # warm-up: imports, allocator, kernels
        rows: dict[str, list[dict[str, float]]] = {"stage": [], "plain": []}
        for i in range(a.repeats):
            rows["stage"].append(run_stage(work, model_dir, data, a.steps, a.batch, i))
            rows["plain"].append(run_plain(work, model_dir, data, a.steps, a.batch, i))

    med = {k: statistics.median(r["tokens_per_second"] for r in v) for k, v in rows.items()}
    wall = {k: statistics.median(r["wall"] for r in v) for k, v in rows.items()}
    ratio = med["stage"] / med["plain"]
    print(f"{'side':<8}{'tokens/s (median)':>20}{'runs':>40}{'wall s (median)':>18}")
    for k in ("stage", "plain"):
        runs = ", ".join(f"{r['tokens_per_second']:.0f}" for r in rows[k])
        print(f"{k:<8}{med[k]:>20.1f}{runs:>40}{wall[k]:>18.2f}")
    print(f"stage/plain throughput ratio: {ratio:.4f} (overhead {100 * (1 - ratio):+.2f}%; target within 3%)")
    summary = {
        "benchmark": "trainer_overhead",
        "steps": a.steps,
        "batch": a.batch,
        "hidden": a.hidden,
        "layers": a.layers,
        "repeats": a.repeats,
        "stage_tokens_per_second": round(med["stage"], 2),
        "plain_tokens_per_second": round(med["plain"], 2),
        "ratio": round(ratio, 4),
        "stage_wall_s": round(wall["stage"], 2),
        "plain_wall_s": round(wall["plain"], 2),
        "runs": rows,
    }
    print(json.dumps(summary))
    if a.json_out:
        a.json_out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
