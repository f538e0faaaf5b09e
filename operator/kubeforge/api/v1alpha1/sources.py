"""Where a stage's model and tokenizer come from: a URI, another object's artifact, or a new architecture."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .base import MAX_URI, KubeModel, cel
from .references import ModelRef


class ArchitectureConfig(KubeModel):
    """A decoder architecture to initialise from scratch (pretraining without a base model)."""

    family: Literal["llama", "gpt2"] = Field(default="llama", description="Model family (transformers config).")
    hidden_size: int = Field(default=64, ge=8, le=65536, description="Width of the hidden states.")
    num_layers: int = Field(default=2, ge=1, le=512, description="Number of transformer blocks.")
    num_heads: int = Field(default=4, ge=1, le=512, description="Attention heads per block.")
    intermediate_size: int | None = Field(
        default=None, ge=8, description="MLP width; defaults to 4x hidden size (gpt2) or 8/3x (llama)."
    )
    vocab_size: int | None = Field(
        default=None, ge=64, description="Vocabulary size; defaults to the tokenizer's size."
    )
    max_position_embeddings: int = Field(default=512, ge=16, le=1048576, description="Longest sequence.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.hiddenSize % self.numHeads == 0",
                    "hiddenSize must be divisible by numHeads",
                    ".hiddenSize",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ArchitectureConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hiddenSize must be divisible by numHeads")
        return self


class ModelSource(KubeModel):
    """Where a model comes from: exactly one of `uri`, `ref`, `architecture`."""

    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URI,
        description=(
            "Model location: a Hugging Face id (`org/name` or `hf://org/name`), `s3://bucket/prefix`, "
            "`pvc://claim/path` or `file:///path` to an HF-format directory."
        ),
    )
    ref: ModelRef | None = Field(default=None, description="Use the model artifact produced by another object.")
    architecture: ArchitectureConfig | None = Field(
        default=None, description="Initialise a new model from this architecture (training from scratch)."
    )
    revision: str | None = Field(
        default=None, max_length=256, description="Hub revision or commit when `uri` is a hub id."
    )
    trust_remote_code: bool = Field(default=False, description="Allow custom model code from the model repository.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.uri), has(self.ref), has(self.architecture)].filter(x, x).size() == 1",
                    "exactly one of uri, ref or architecture must be set",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if sum(x is not None for x in (self.uri, self.ref, self.architecture)) != 1:
            raise ValueError("exactly one of uri, ref or architecture must be set")
        return self


class TokenizerSource(KubeModel):
    """Tokenizer: an existing one, or one trained on the input Dataset."""

    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URI,
        description="Tokenizer location (same forms as model uri); defaults to the model's own.",
    )
    train_vocab_size: int | None = Field(
        default=None,
        ge=64,
        le=1048576,
        description="Train a byte-level BPE tokenizer of this size on the training split (from-scratch runs).",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.uri) && has(self.trainVocabSize))", "set either uri or trainVocabSize, not both")
            ]
        }
    )

    @model_validator(mode="after")
    def _one(self) -> TokenizerSource:
        if self.uri is not None and self.train_vocab_size is not None:
            raise ValueError("set either uri or trainVocabSize, not both")
        return self
