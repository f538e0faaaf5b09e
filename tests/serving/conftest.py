"""Tiny real models for the serving tests: a ~100k-param LLaMA, a reward model and a LoRA adapter.

Everything is built locally (no hub): a ByteLevel BPE trained on a few sentences, random-init
weights with a few optimiser steps so logits are not uniform.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = [
    f"the {a} {b} jumps over the {c} dog number {i}."
    for i, (a, b, c) in enumerate(
        [(a, b, c) for a in ("quick", "slow", "red") for b in ("fox", "cat", "bird") for c in ("lazy", "happy", "old")]
    )
] * 4


def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(str(path))


def _llama_config(vocab: int) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _train(model: object, tok_dir: Path, steps: int = 15) -> None:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    batch = tok(SENTENCES[:16], return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)  # type: ignore[attr-defined]
    model.train()  # type: ignore[attr-defined]
    for _ in range(steps):
        out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))  # type: ignore[operator]
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Causal LM directory: config, safetensors, tokenizer files."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tokenizer(path)
    model = LlamaForCausalLM(_llama_config(300))  # type: ignore[arg-type]
    _train(model, path)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sequence-classification (reward) model directory with num_labels=1."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny-rm")
    build_tokenizer(path)
    cfg = _llama_config(300)
    cfg.num_labels = 1  # type: ignore[attr-defined]
    LlamaForSequenceClassification(cfg).save_pretrained(str(path))  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """A LoRA adapter (non-zero B so merging changes logits) on top of `tiny_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("tiny-lora")
    base = LlamaForCausalLM.from_pretrained(str(tiny_dir))
    peft_model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(str(path))
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Dataset artifact directory (train/validation parquet with a `text` column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("calib-ds")
    pq.write_table(pa.table({"text": SENTENCES[:40]}), path / "train.parquet")
    pq.write_table(pa.table({"prompt": SENTENCES[:8], "completion": [" yes"] * 8}), path / "validation.parquet")
    return path
