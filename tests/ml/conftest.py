"""Tiny, local, deterministic ML fixtures: a BPE tokenizer, a ~50k-parameter LLaMA, prepared Datasets.

Shared by the ml tier (training, reward, RLHF, evaluation tests). Nothing touches a hub.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "coal": "black", "blood": "red"}
ANIMALS = ["cat", "dog", "bird", "fish", "cow", "fox", "owl", "bee"]
PLACES = ["mat", "log", "hill", "road", "roof", "boat", "tree", "rock"]


def _text_records(n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {"text": f"the {rng.choice(ANIMALS)} sat on the {rng.choice(PLACES)} and the {rng.choice(ANIMALS)} ran away."}
        for _ in range(n)
    ]


def _instruction_records(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        thing = rng.choice(list(COLORS))
        out.append({"prompt": f"What color is the {thing}? Answer:", "completion": f" {COLORS[thing]}."})
    return out


def _chat_records(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        thing = rng.choice(list(COLORS))
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"What color is the {thing}?"},
                    {"role": "assistant", "content": f"The {thing} is {COLORS[thing]}."},
                ]
            }
        )
    return out


def _preference_records(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        a = rng.choice(ANIMALS)
        out.append(
            {
                "prompt": f"Tell me about the {a}.",
                "chosen": f" The {a} is good and kind.",
                "rejected": f" bad bad {a} bad bad.",
            }
        )
    return out


MAKERS: dict[str, Callable[[int, random.Random], list[dict[str, Any]]]] = {
    "text": _text_records,
    "instruction": _instruction_records,
    "chat": _chat_records,
    "preference": _preference_records,
}
SIZES = {"train": 96, "validation": 24, "test": 24}


def write_dataset(root: Path, task: str, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A prepared Dataset directory: {train,validation,test}.parquet in the task's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (sizes or SIZES).items():
        pq.write_table(pa.Table.from_pylist(MAKERS[task](n, rng)), root / f"{split}.parquet")
    return root


def corpus() -> list[str]:
    """Sentences covering every fixture task's vocabulary."""
    rng = random.Random(1)
    texts: list[str] = []
    for task, maker in MAKERS.items():
        for rec in maker(60, rng):
            if task == "chat":
                texts.extend(m["content"] for m in rec["messages"])
            else:
                texts.extend(str(v) for v in rec.values())
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Byte-level BPE (vocab ~400) trained on the fixture vocabulary, with a chat template."""
    from kubeforge_trainer.modelio import train_tokenizer

    out = tmp_path_factory.mktemp("tiny-tokenizer")
    train_tokenizer(corpus(), vocab_size=400).save_pretrained(out)
    return out


def save_tiny_llama(out: Path, tokenizer_dir: Path, kv_heads: int = 4, tied: bool = True) -> Path:
    """A random 2-layer LLaMA (hidden 32, 4 heads, ~40k params) plus the tokenizer, saved in HF format."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_factory() -> Callable[..., Path]:
    """`save_tiny_llama` for tests that need a variant (untied head, grouped KV heads)."""
    return save_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A random 2-layer LLaMA (hidden 32, ~40k params) plus the tiny tokenizer, in HF format."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tiny_dataset_dir(task)` → a prepared Dataset dir for text/instruction/chat/preference (cached)."""
    cache: dict[str, Path] = {}

    def make(task: str) -> Path:
        if task not in cache:
            cache[task] = write_dataset(tmp_path_factory.mktemp(f"dataset-{task}"), task)
        return cache[task]

    return make


def stage_config(
    kind: str,
    spec: dict[str, Any],
    output: Path,
    inputs: dict[str, Path | str] | None = None,
    name: str = "t",
) -> Any:
    """A StageConfig like the operator renders, with inputs as External URIs."""
    from kubeforge.api.v1alpha1 import KINDS
    from kubeforge.stage import ResolvedInput, StageConfig, external_inputs, stage_name

    body = {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "ml"}}
    resource = KINDS[kind].model_validate({**body, "spec": spec})
    return StageConfig(
        stage=stage_name(resource),
        resource={**body, "spec": resource.spec.to_wire()},  # type: ignore[attr-defined]
        inputs=external_inputs(resource)
        | {k: ResolvedInput(kind="External", name=str(v), uri=str(v), digest=None) for k, v in (inputs or {}).items()},
        output_uri=str(output),
        checkpoint_uri=str(output / "checkpoints"),
        progress_path=str(output / "progress.json"),
        result_path=str(output / "result.json"),
        metrics_port=None,
    )


@pytest.fixture
def make_stage_config() -> Callable[..., Any]:
    """Factory: `make_stage_config(kind, spec, output, inputs)` → StageConfig."""
    return stage_config


def _fast_hparams(**over: Any) -> dict[str, Any]:
    hp = {"learningRate": 5e-3, "maxSteps": 12, "batchSize": 8, "maxLength": 64, "loggingSteps": 2, "seed": 0}
    hp.update(over)
    return hp


@pytest.fixture
def fast_hparams() -> Callable[..., dict[str, Any]]:
    """Factory: hyperparameters small enough for 2 CPU cores, with overrides."""
    return _fast_hparams
