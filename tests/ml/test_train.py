"""pretrain/sft stages: real training on a tiny LLaMA, on CPU."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kubeforge_trainer import modelio, train
from kubeforge_trainer.runtime import ProgressReporter, StageError

pytestmark = pytest.mark.ml


def _run(config: Any) -> Any:
    return train.run(config, ProgressReporter(config))


def _generate(path: Path) -> str:
    model, tok = modelio.load_for_inference(path)
    ids = tok("What color is the sky? Answer:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return str(tok.decode(out[0], skip_special_tokens=True))


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_pretrain_from_architecture_trains_tokenizer_and_loss_falls(
    tmp_path: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any, fast_hparams: Any
) -> None:
    spec = {
        "method": "pretrain",
        "model": {"architecture": {"family": "llama", "hiddenSize": 32, "numLayers": 2, "numHeads": 4}},
        "tokenizer": {"trainVocabSize": 300},
        "dataset": {"name": "text"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=30, learningRate=1e-2, loggingSteps=5),
        "checkpointing": {"intervalSteps": 10, "keep": 2},
    }
    out = tmp_path / "out"
    result = _run(make_stage_config("TrainingJob", spec, out, {"dataset": tiny_dataset_dir("text")}))
    assert result.succeeded, result.message
    m = result.metrics
    assert m["train_loss"] < 0.6 * m["train_loss_initial"], m
    assert "eval_loss" in m and m["eval_loss"] < m["train_loss_initial"]
    assert m["global_step"] == 30
    # trained tokenizer + model saved together; manifest says full layout
    assert json.loads((out / "kubeforge-model.json").read_text())["layout"] == "full"
    tok = modelio.load_tokenizer(str(out))
    assert len(tok) <= 300
    assert result.artifact.digest.startswith("sha256:")
    assert (out / "lineage.json").is_file()
    assert [c.rsplit("/", 1)[1] for c in result.checkpoints] == ["checkpoint-20", "checkpoint-30"]  # keep=2
    progress = json.loads((out / "progress.json").read_text())
    assert progress["step"] == 30 and progress["totalSteps"] == 30 and progress["tokensPerSecond"] > 0
    _generate(out)


def test_the_same_spec_gives_the_same_weights(
    tmp_path: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any, fast_hparams: Any
) -> None:
    """A model from an architecture and a LoRA adapter start from random weights: they come from
    `hyperparameters.seed`, not from whatever the process's random state was. Regression: unseeded, the
    quickstart's pretraining ended at a different loss on every run and its evaluation gate passed or not."""
    data = tiny_dataset_dir("text")
    spec = {
        "method": "pretrain",
        "model": {"architecture": {"family": "llama", "hiddenSize": 32, "numLayers": 1, "numHeads": 4}},
        "tokenizer": {"trainVocabSize": 300},
        "dataset": {"name": "text"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=2, learningRate=1e-2),
    }
    states = []
    for i, noise in enumerate((1, 2)):
        torch.manual_seed(noise)  # another state, as another process would start with
        out = tmp_path / f"run{i}"
        assert _run(make_stage_config("TrainingJob", spec, out, {"dataset": data})).succeeded
        states.append(_state(out))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), "two runs of one spec, two models"
    lora = {k: v for k, v in spec.items() if k != "tokenizer"} | {
        "method": "sft", "model": {"uri": str(tmp_path / "run0")}, "dataset": {"name": "instr"},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "merge": False}}
    adapters = []
    for i, noise in enumerate((3, 4)):
        torch.manual_seed(noise)
        out = tmp_path / f"lora{i}"
        assert _run(make_stage_config("TrainingJob", lora, out, {"dataset": tiny_dataset_dir("instruction")})).succeeded
        adapters.append(sorted((p.name, p.read_bytes()) for p in out.glob("adapter_model.*")))
    assert adapters[0] and adapters[0] == adapters[1], "two runs of one LoRA spec, two adapters"


@pytest.mark.parametrize(
    ("peft", "merge"),
    [
        ({"method": "lora", "r": 4, "alpha": 8, "merge": True}, True),
        ({"method": "prompt", "numVirtualTokens": 4, "promptInitText": "Answer with a color"}, False),
        ({"method": "ia3"}, False),
    ],
    ids=["lora-merge", "prompt-text-init", "ia3"],
)
def test_sft_peft_trains_adapter_and_reloads(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
    peft: dict[str, Any],
    merge: bool,
) -> None:
    spec = {
        "method": "sft",
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "instr"},
        "peft": peft,
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=8, learningRate=5e-2, loggingSteps=2),
        "checkpointing": {"intervalSteps": 100},
    }
    out = tmp_path / "out"
    result = _run(make_stage_config("TrainingJob", spec, out, {"dataset": tiny_dataset_dir("instruction")}))
    assert result.succeeded, result.message
    m = result.metrics
    assert 0 < m["trainable_params"] < m["total_params"]
    assert torch.isfinite(torch.tensor(m["train_loss"]))
    manifest = json.loads((out / "kubeforge-model.json").read_text())
    base = _state(tiny_llama_dir)
    if merge:
        assert manifest["layout"] == "full" and (out / "adapter" / "adapter_config.json").is_file()
        merged = _state(out)
        changed = [k for k in base if k in merged and not torch.equal(base[k], merged[k])]
        assert changed, "merged weights equal the base: LoRA learned nothing"
        from peft import PeftModel

        # merged model == base + adapter (within merge tolerance)
        ids = torch.tensor([[1, 5, 9, 13, 17]])
        ref = PeftModel.from_pretrained(modelio.load_causal_lm(tiny_llama_dir), out / "adapter").eval()
        full = modelio.load_causal_lm(out).eval()
        with torch.no_grad():
            assert torch.allclose(ref(ids).logits, full(ids).logits, atol=1e-4)
    else:
        assert manifest["layout"] == "adapter" and manifest["baseModel"] == str(tiny_llama_dir)
        assert modelio.is_adapter_dir(out)
        from safetensors.torch import load_file

        adapter = load_file(str(out / "adapter_model.safetensors"))
        assert adapter and all(torch.isfinite(t).all() for t in adapter.values())
        if peft["method"] == "ia3":  # IA3 vectors start at exactly 1.0: training moved them
            assert any(not torch.allclose(t, torch.ones_like(t)) for t in adapter.values())
        else:  # prompt tuning init from text = the embeddings of those tokens; training moved them
            tok = modelio.load_tokenizer(str(tiny_llama_dir))
            init_ids = tok("Answer with a color")["input_ids"]
            emb = base["model.embed_tokens.weight"]
            init = emb[torch.tensor((init_ids * 4)[:4])]
            (learned,) = adapter.values()
            assert learned.shape == init.shape and not torch.allclose(learned, init)
    _generate(out)


def test_sft_chat_freeze_leaves_frozen_params_unchanged(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    spec = {
        "method": "sft",
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "chat"},
        "peft": {"method": "freeze", "freezeLayers": 1},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=6, learningRate=1e-2),
    }
    out = tmp_path / "out"
    result = _run(make_stage_config("TrainingJob", spec, out, {"dataset": tiny_dataset_dir("chat")}))
    assert result.succeeded, result.message
    before, after = _state(tiny_llama_dir), _state(out)
    frozen = [k for k in before if k.startswith(("model.embed_tokens", "model.layers.0."))]
    trained = [k for k in before if k.startswith("model.layers.1.")]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(before[k], after[k]), f"{k} changed although frozen"
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    _generate(out)


def test_qlora_on_cpu_is_a_clear_error(
    tmp_path: Path, tiny_llama_dir: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any
) -> None:
    spec = {
        "method": "sft",
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "instr"},
        "peft": {"method": "qlora"},
        "resources": {"gpu": 1},
    }
    config = make_stage_config("TrainingJob", spec, tmp_path / "out", {"dataset": tiny_dataset_dir("instruction")})
    with pytest.raises(StageError) as err:
        _run(config)
    msg = str(err.value)
    assert "spec.peft.method" in msg and "spec.resources.gpu" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("spec_over", "dataset_task", "needle"),
    [
        ({"method": "pretrain"}, "instruction", "needs a Dataset with columns text"),
        ({"precision": "fp16"}, "instruction", "spec.precision fp16"),
        ({"peft": {"method": "freeze", "freezeLayers": 9}}, "instruction", "spec.peft.freezeLayers 9"),
        ({"peft": {"method": "ia3", "targetModules": ["no_such_module"]}}, "instruction", "spec.peft.method ia3"),
        ({"peft": {"method": "prefix", "merge": True}}, "instruction", "spec.peft.merge"),
    ],
    ids=["missing-column", "fp16-cpu", "freeze-too-many", "peft-incompatible", "merge-prefix"],
)
def test_bad_config_or_data_is_one_line_stage_error(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
    spec_over: dict[str, Any],
    dataset_task: str,
    needle: str,
) -> None:
    spec = {
        "method": "sft",
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "d"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=1),
        **spec_over,
    }
    config = make_stage_config("TrainingJob", spec, tmp_path / "out", {"dataset": tiny_dataset_dir(dataset_task)})
    with pytest.raises(StageError) as err:
        _run(config)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_empty_training_split_is_a_stage_error(
    tmp_path: Path, tiny_llama_dir: Path, make_stage_config: Any, fast_hparams: Any
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "empty"
    data.mkdir()
    schema = pa.schema([("prompt", pa.string()), ("completion", pa.string())])
    for split in ("train", "validation", "test"):
        pq.write_table(pa.Table.from_pylist([], schema=schema), data / f"{split}.parquet")
    spec = {"method": "sft", "model": {"uri": str(tiny_llama_dir)}, "dataset": {"name": "d"}, "precision": "fp32"}
    with pytest.raises(StageError, match=r"split 'train' of Dataset .* is empty"):
        _run(make_stage_config("TrainingJob", spec, tmp_path / "out", {"dataset": data}))


def test_chat_sft_trains_on_assistant_turns_only(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kubeforge_trainer.train import assistant_only_loss

    tok = modelio.load_tokenizer(str(tiny_llama_dir))  # Kubeforge's default template: {% generation %} markers
    assert assistant_only_loss(tok)
    msgs = [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "The sky is blue."}]
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(trained) == "The sky is blue.<|eos|>"  # the user turn carries no loss

    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert not assistant_only_loss(tok)  # unmarked and unknown to TRL: whole conversations, with a warning
    assert "training on whole conversations" in capsys.readouterr().err

    spec = {
        "method": "sft",
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "chat"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=2),
    }
    result = _run(make_stage_config("TrainingJob", spec, tmp_path / "out", {"dataset": tiny_dataset_dir("chat")}))
    assert result.succeeded, result.message
    assert result.metrics["assistant_only_loss"] == 1.0 and torch.isfinite(torch.tensor(result.metrics["train_loss"]))
