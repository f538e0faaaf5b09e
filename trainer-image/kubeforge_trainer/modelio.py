"""Loading, building and saving models and tokenizers in the layout every stage shares.

Artifact layout written by the training stages (documented contract for downstream stages):

- full fine-tuning, freeze, pretraining, reward models: the root is a complete HF model directory
  (`config.json`, `model.safetensors`, tokenizer files).
- PEFT with `peft.merge: true`: the root is the merged full model; `adapter/` holds the adapter.
- PEFT without merge: the root is the adapter (`adapter_config.json`, `adapter_model.safetensors`)
  plus tokenizer files; the base model is named in `kubeforge-model.json` (`baseModel`, a URI).
- Every root has `kubeforge-model.json`: `{"layout": "full"|"adapter", "task": "causal-lm"|
  "sequence-classification"|"regression", "peft": <method>, "baseModel": <uri or null>}`; classifier and
  regression artifacts (TrainingJob method classification/regression) add `numLabels`, `labels` (the
  label of each id) and `problemType`, so an adapter's base can be given the right head.

`load_causal_lm(path)`, `load_sequence_classifier(path)` and `load_for_inference(path)` accept all of these.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from kubeforge.api.v1alpha1.sources import ArchitectureConfig
from kubeforge.stage import local_path
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .runtime import StageError

MANIFEST = "kubeforge-model.json"
# Manifest tasks whose model is an AutoModelForSequenceClassification (reward models included).
SEQUENCE_TASKS = ("sequence-classification", "regression")
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"

# A minimal chat template for tokenizers that have none (e.g. trained from scratch), with the
# `{% generation %}` markers TRL needs for assistant-only loss.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def model_location(uri: str) -> str:
    """A local directory for file/pvc URIs and plain paths; the hub id for `hf://org/name` / `org/name`."""
    if uri.startswith("hf://"):
        return uri.removeprefix("hf://")
    if uri.startswith("s3://"):
        raise StageError(f"{uri}: s3:// model locations must be synced to a volume first (use pvc:// or file://)")
    path = local_path(uri)
    if path.exists():
        return str(path)
    if "://" not in uri and uri.count("/") == 1 and not uri.startswith(("/", ".")):
        return uri  # a hub id (needs network or a warm cache)
    raise StageError(f"model location {uri} does not exist (resolved to {path})")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """`kubeforge-model.json` of an artifact, or {} for a plain HF directory."""
    p = Path(path) / MANIFEST
    return dict(json.loads(p.read_text())) if p.is_file() else {}


def write_manifest(path: str | Path, **fields: Any) -> None:
    """Write `kubeforge-model.json` (sorted, stable for digests)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / MANIFEST).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


def is_adapter_dir(path: str | Path) -> bool:
    """True when `path` is a PEFT adapter without a full model beside it."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def _adapter_base(path: Path) -> str:
    base = read_manifest(path).get("baseModel")
    if base:
        return model_location(str(base))
    cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    name = cfg.get("base_model_name_or_path")
    if not name:
        raise StageError(f"{path}: adapter names no base model (adapter_config.json base_model_name_or_path)")
    return str(name)


def load_tokenizer(location: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token (eos, else unk/sep) so batching works."""
    try:
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot load a tokenizer from {location}: {str(exc).splitlines()[0]}") from None
    ensure_pad_token(tok)
    return tok


def ensure_pad_token(tok: PreTrainedTokenizerBase) -> None:
    """Reuse eos (or sep/unk) as padding when the tokenizer has no pad token."""
    if tok.pad_token is None:
        for candidate in (tok.eos_token, tok.sep_token, tok.unk_token):
            if candidate is not None:
                tok.pad_token = candidate
                break


def ensure_chat_template(tok: PreTrainedTokenizerBase) -> None:
    """Give tokenizers without one a minimal chat template (needed for `messages` data)."""
    if not getattr(tok, "chat_template", None):
        tok.chat_template = DEFAULT_CHAT_TEMPLATE


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (from-scratch pretraining)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: generate() breaks on them
    )
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


def build_from_architecture(arch: ArchitectureConfig, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised decoder for spec.model.architecture, sized to the tokenizer."""
    vocab = arch.vocab_size or len(tok)
    if vocab < len(tok):
        raise StageError(
            f"spec.model.architecture.vocabSize {vocab} is smaller than the tokenizer's {len(tok)} tokens; "
            "raise it or leave it unset"
        )
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if arch.family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg: Any = LlamaConfig(
            vocab_size=vocab,
            hidden_size=arch.hidden_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.num_heads,
            intermediate_size=arch.intermediate_size or max(8, (arch.hidden_size * 8) // 3),
            max_position_embeddings=arch.max_position_embeddings,
            tie_word_embeddings=True,
            **ids,
        )
        return LlamaForCausalLM(cfg)
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=arch.hidden_size,
        n_layer=arch.num_layers,
        n_head=arch.num_heads,
        n_inner=arch.intermediate_size,
        n_positions=arch.max_position_embeddings,
        **ids,
    )
    return GPT2LMHeadModel(cfg)


def load_causal_lm(
    path: str | Path,
    *,
    merge: bool = False,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Any:
    """A causal LM from a full model dir, a merged artifact, or an adapter dir (base + adapter).

    With `merge=True` an additive adapter (LoRA, IA3) is folded into its base (a plain
    PreTrainedModel comes back); prefix/prompt adapters cannot merge and stay a PeftModel.
    """
    loc = path if isinstance(path, str) and not Path(path).exists() else str(path)
    try:
        if Path(loc).exists() and is_adapter_dir(loc):
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(
                _adapter_base(Path(loc)), dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
            )
            model = PeftModel.from_pretrained(base, loc)
            if merge and not is_prompt_learning(model):
                return model.merge_and_unload()
            return model
        return AutoModelForCausalLM.from_pretrained(loc, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except StageError:
        raise
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot load a causal LM from {loc}: {str(exc).splitlines()[0]}") from None


def is_prompt_learning(model: Any) -> bool:
    """Whether a PeftModel is prefix/prompt tuning (virtual tokens; nothing to merge)."""
    cfg = getattr(model, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


def head_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """`from_pretrained` kwargs giving a base the head a classifier/regression manifest describes ({} if none)."""
    n = manifest.get("numLabels")
    if not n:
        return {}
    out: dict[str, Any] = {"num_labels": int(n)}
    labels = manifest.get("labels") or []
    if labels:
        out["id2label"] = {i: str(v) for i, v in enumerate(labels)}
        out["label2id"] = {str(v): i for i, v in enumerate(labels)}
    if manifest.get("problemType"):
        out["problem_type"] = manifest["problemType"]
    return out


def load_sequence_classifier(
    path: str | Path,
    *,
    merge: bool = True,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Any:
    """A sequence-classification/regression model from a full dir or an adapter dir (base + adapter).

    For an adapter the base gets the head the manifest names (`numLabels`, `labels`), then the adapter
    (with its trained head) is loaded; with `merge=True` additive adapters are folded in. OSError and
    ValueError propagate so callers can name their own fix.
    """
    loc = str(path)
    if Path(loc).exists() and is_adapter_dir(loc):
        from peft import PeftModel

        base = full_model_dir(_adapter_base(Path(loc)))
        base_model = AutoModelForSequenceClassification.from_pretrained(
            base,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
            **(head_config(read_manifest(loc)) | kwargs),
        )
        model = PeftModel.from_pretrained(base_model, loc)
        if merge and not is_prompt_learning(model):
            return model.merge_and_unload()
        return model
    return AutoModelForSequenceClassification.from_pretrained(
        loc, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
    )


def load_for_inference(path: str | Path, dtype: torch.dtype | None = None) -> tuple[Any, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) for any artifact layout above; adapters are merged for speed."""
    kind = read_manifest(path).get("task", "causal-lm")
    tok = load_tokenizer(str(path))
    if kind in SEQUENCE_TASKS:
        model: Any = load_sequence_classifier(path, dtype=dtype)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
    else:
        model = load_causal_lm(path, merge=True, dtype=dtype)
    model.eval()
    return model, tok


def full_model_dir(path: str, scratch: str | None = None) -> str:
    """A directory with a full HF model: `path` itself, or the adapter merged into a temp dir.

    Stages that need `from_pretrained` of a different head (reward models) start from this.
    """
    if not (Path(path).exists() and is_adapter_dir(path)):
        return path
    model = load_causal_lm(path, merge=True)
    if is_prompt_learning(model):
        raise StageError(
            f"{path} is a prefix/prompt-tuning adapter, which cannot be merged into a full model: "
            "start from its base model, or train the parent with spec.peft.method lora/ia3 (or merge: true)"
        )
    out = Path(scratch or tempfile.mkdtemp(prefix="kubeforge-merged-"))
    model.save_pretrained(out)
    load_tokenizer(path).save_pretrained(out)
    return str(out)
