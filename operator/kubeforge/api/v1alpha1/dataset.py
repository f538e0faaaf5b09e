"""Dataset: ingest, clean and split training data."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import KubeModel, Name, cel
from .kuberesource import KubeResource, bounded_printer_columns
from .references import SpecReference, rerun_on_input_change_field
from .status import Artifact, CommonStatus
from .storage import StorageLocation


class DatasetTask(StrEnum):
    """The record schema a Dataset is normalised to."""

    TEXT = "text"
    INSTRUCTION = "instruction"
    CHAT = "chat"
    PREFERENCE = "preference"
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    MULTIPLE_CHOICE = "multiple-choice"
    QUESTION_ANSWER = "question-answer"


# Columns each task's normalised records carry.
TASK_COLUMNS: dict[DatasetTask, tuple[str, ...]] = {
    DatasetTask.TEXT: ("text",),
    DatasetTask.INSTRUCTION: ("prompt", "completion"),
    DatasetTask.CHAT: ("messages",),
    DatasetTask.PREFERENCE: ("prompt", "chosen", "rejected"),
    DatasetTask.CLASSIFICATION: ("text", "label"),
    DatasetTask.REGRESSION: ("text", "value"),
    DatasetTask.MULTIPLE_CHOICE: ("question", "choices", "answer"),
    DatasetTask.QUESTION_ANSWER: ("question", "answer"),
}
# Columns a task keeps when the source has them (mapped explicitly, or present under the field's name).
OPTIONAL_COLUMNS: dict[DatasetTask, tuple[str, ...]] = {
    DatasetTask.MULTIPLE_CHOICE: ("subject", "rationale"),
    DatasetTask.QUESTION_ANSWER: ("rationale",),
}


class FromDataset(KubeModel):
    """Derive a Dataset from another Dataset's output."""

    name: Name = Field(description="Name of the parent Dataset (same namespace).")
    split: Literal["train", "validation", "test", "all"] = Field(
        default="all", description="Which split of the parent to read."
    )


class DatasetSource(KubeModel):
    """Where raw records come from: exactly one of `uris` or `fromDataset`."""

    uris: list[str] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Input files or prefixes: `file:///path`, `pvc://claim/path`, `s3://bucket/key`, "
            "or `hf://org/name` (a Hugging Face dataset). Globs are allowed in paths."
        ),
    )
    from_dataset: FromDataset | None = Field(default=None, description="Use another Dataset's output as input.")
    hf_config: str | None = Field(default=None, description="Subset/config name for `hf://` sources.")
    hf_split: str | None = Field(default=None, description="Split to read for `hf://` sources (default train).")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.uris) != has(self.fromDataset)",
                    "exactly one of uris or fromDataset must be set",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSource:
        if (self.uris is None) == (self.from_dataset is None):
            raise ValueError("exactly one of uris or fromDataset must be set")
        return self


class ColumnMapping(KubeModel):
    """Source column names for the task's fields (defaults: the field names themselves)."""

    text: str | None = Field(default=None, description="Column with the text (text/classification/regression).")
    prompt: str | None = Field(default=None, description="Column with the prompt/instruction.")
    completion: str | None = Field(default=None, description="Column with the response (instruction task).")
    messages: str | None = Field(default=None, description="Column with chat messages (list of role/content).")
    chosen: str | None = Field(default=None, description="Column with the preferred response.")
    rejected: str | None = Field(default=None, description="Column with the dispreferred response.")
    label: str | None = Field(default=None, description="Column with the class label.")
    value: str | None = Field(default=None, description="Column with the regression target.")
    question: str | None = Field(
        default=None, description="Column with the question (multiple-choice and question-answer tasks)."
    )
    choices: str | None = Field(
        default=None,
        description=(
            "Column holding the options as a list (or a JSON list string, e.g. from CSV) (multiple-choice task); "
            "use `choiceColumns` when each option has its own column."
        ),
    )
    choice_columns: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=26,
        description=(
            "Columns holding one option each, in order (e.g. `[A, B, C, D]` for MMLU's CSV files); empty cells "
            "are dropped. Alternative to `choices`."
        ),
    )
    answer: str | None = Field(
        default=None,
        description=(
            "Column with the answer. multiple-choice: the option's index (0-based), letter (`A`, `B`, ...) or "
            "text, stored as the index; question-answer: the answer text, GSM8K style `reasoning #### 42` allowed."
        ),
    )
    subject: str | None = Field(
        default=None,
        description=(
            "Optional column with the subject (multiple-choice), e.g. `high_school_physics`; prompts name it in "
            "their header and few-shot exemplars can be drawn from the same subject. Kept when a `subject` "
            "column exists even if unmapped."
        ),
    )
    rationale: str | None = Field(
        default=None,
        description=(
            "Optional column with worked reasoning for the answer (chain-of-thought exemplars). Kept when a "
            "`rationale` column exists even if unmapped; question-answer records without one use the text "
            "before `####` in the answer."
        ),
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.choices) || !has(self.choiceColumns)", "set columns.choices or columns.choiceColumns, "
                    "not both")
            ]
        }
    )

    @model_validator(mode="after")
    def _one_choice_source(self) -> ColumnMapping:
        if self.choices is not None and self.choice_columns is not None:
            raise ValueError("set columns.choices or columns.choiceColumns, not both")
        return self


class NearDuplicate(KubeModel):
    """MinHash/LSH near-duplicate removal."""

    enabled: bool = Field(default=False, description="Remove records whose Jaccard similarity exceeds threshold.")
    threshold: float = Field(default=0.85, gt=0, le=1, description="Jaccard similarity above which records are dupes.")
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    ngram: int = Field(default=5, ge=1, le=32, description="Character shingle size.")


class Dedup(KubeModel):
    """Duplicate removal."""

    exact: bool = Field(default=True, description="Drop records whose normalised content is identical.")
    near: NearDuplicate = Field(default_factory=NearDuplicate, description="Near-duplicate removal.")


class Filters(KubeModel):
    """Record filters (lengths in characters of the main text field)."""

    min_length: int | None = Field(default=None, ge=0, description="Drop records shorter than this.")
    max_length: int | None = Field(default=None, ge=1, description="Drop records longer than this.")
    include_regex: list[str] | None = Field(default=None, description="Keep only records matching all of these.")
    exclude_regex: list[str] | None = Field(default=None, description="Drop records matching any of these.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.minLength) || !has(self.maxLength) || self.minLength <= self.maxLength",
                    "minLength must be <= maxLength",
                    ".minLength",
                )
            ]
        }
    )

    @model_validator(mode="after")
    def _order(self) -> Filters:
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError("minLength must be <= maxLength")
        return self


PiiKind = Literal["email", "phone", "key", "ip", "credit-card"]
DEFAULT_PII: tuple[PiiKind, ...] = ("email", "phone", "key")


class Pii(KubeModel):
    """PII scrubbing."""

    enabled: bool = Field(default=False, description="Scrub personal data before writing splits.")
    kinds: list[PiiKind] = Field(default_factory=lambda: list(DEFAULT_PII), description="What to scrub.")
    replacement: str = Field(default="[{kind}]", description="Replacement text; `{kind}` becomes e.g. `EMAIL`.")


class Outliers(KubeModel):
    """Outlier removal for regression targets."""

    method: Literal["none", "zscore", "iqr"] = Field(default="none", description="Rule used.")
    threshold: float = Field(default=3.0, gt=0, description="z-score or IQR multiplier beyond which to drop.")


class Normalize(KubeModel):
    """Text normalisation."""

    unicode: Literal["none", "NFC", "NFKC"] = Field(default="NFKC", description="Unicode normal form.")
    lowercase: bool = Field(default=False, description="Lower-case all text.")
    collapse_whitespace: bool = Field(default=True, description="Collapse runs of whitespace and strip ends.")


class Processing(KubeModel):
    """Cleaning pipeline, applied in field order."""

    normalize: Normalize = Field(default_factory=Normalize, description="Text normalisation.")
    pii: Pii = Field(default_factory=Pii, description="PII scrubbing.")
    filters: Filters = Field(default_factory=Filters, description="Length and regex filters.")
    dedup: Dedup = Field(default_factory=Dedup, description="Exact and near-duplicate removal.")
    outliers: Outliers = Field(default_factory=Outliers, description="Regression target outlier removal.")
    label_map: dict[str, str] | None = Field(
        default=None, description="Rename labels (`from: to`); labels mapped to `__drop__` are removed."
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template rendering `messages` into a `text` field (chat task); unset keeps messages.",
    )


class Split(KubeModel):
    """Deterministic train/validation/test split."""

    train: float = Field(default=0.8, ge=0, le=1, description="Fraction of records in the train split.")
    validation: float = Field(default=0.1, ge=0, le=1, description="Fraction in the validation split.")
    test: float = Field(default=0.1, ge=0, le=1, description="Fraction in the test split.")
    seed: int = Field(default=42, ge=0, description="Shuffle seed.")
    stratify: bool = Field(
        default=False,
        description=(
            "Split each group on its own so every split keeps the proportions: labels (classification) or "
            "subjects (multiple-choice, so few-shot exemplars of every subject exist in train)."
        ),
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.train + self.validation + self.test > 0.999 && "
                    "self.train + self.validation + self.test < 1.001",
                    "split ratios train + validation + test must sum to 1",
                ),
                cel("self.train > 0.0", "split.train must be > 0", ".train"),
            ]
        }
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> Split:
        if abs(self.train + self.validation + self.test - 1.0) > 1e-3:
            raise ValueError("split ratios train + validation + test must sum to 1")
        if self.train <= 0:
            raise ValueError("split.train must be > 0")
        return self


class DatasetSpec(KubeModel):
    """Desired state of a Dataset."""

    source: DatasetSource = Field(description="Where raw records come from.")
    format: Literal["auto", "jsonl", "csv", "parquet", "text"] = Field(
        default="auto", description="File format; `auto` infers it from the extension."
    )
    task: DatasetTask = Field(
        description=(
            "Record schema: text, instruction, chat, preference, classification, regression, multiple-choice "
            "(`question`, `choices`, `answer` index, optional `subject`/`rationale`; MMLU style) or "
            "question-answer (`question`, `answer`, optional `rationale`; GSM8K style)."
        ),
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "task is immutable")]},
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping, description="Source column names.")
    processing: Processing = Field(default_factory=Processing, description="Cleaning pipeline.")
    split: Split = Field(default_factory=Split, description="Train/validation/test split.")
    max_records: int | None = Field(default=None, ge=1, description="Read at most this many records.")
    output: StorageLocation = Field(default_factory=StorageLocation, description="Where the splits are written.")
    rerun_on_input_change: bool = rerun_on_input_change_field()

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.split) || !self.split.stratify || self.task == 'classification' || "
                    "self.task == 'multiple-choice'",
                    "split.stratify needs task classification or multiple-choice",
                    ".split.stratify",
                ),
                cel(
                    "!has(self.columns) || !has(self.columns.choiceColumns) || self.task == 'multiple-choice'",
                    "columns.choiceColumns needs task multiple-choice",
                    ".columns.choiceColumns",
                ),
                cel(
                    "!has(self.processing) || !has(self.processing.outliers) || "
                    "self.processing.outliers.method == 'none' || self.task == 'regression'",
                    "processing.outliers needs task regression",
                    ".processing.outliers.method",
                ),
            ]
        }
    )

    @model_validator(mode="after")
    def _task_rules(self) -> DatasetSpec:
        if self.split.stratify and self.task not in (DatasetTask.CLASSIFICATION, DatasetTask.MULTIPLE_CHOICE):
            raise ValueError("split.stratify needs task classification or multiple-choice")
        if self.columns.choice_columns is not None and self.task != DatasetTask.MULTIPLE_CHOICE:
            raise ValueError("columns.choiceColumns needs task multiple-choice")
        if self.processing.outliers.method != "none" and self.task != DatasetTask.REGRESSION:
            raise ValueError("processing.outliers needs task regression")
        return self


class SplitCounts(KubeModel):
    """Records per split."""

    input: int | None = Field(default=None, description="Records read.")
    train: int | None = Field(default=None, description="Records in train.")
    validation: int | None = Field(default=None, description="Records in validation.")
    test: int | None = Field(default=None, description="Records in test.")


class DatasetStatus(CommonStatus):
    """Observed state of a Dataset."""

    counts: SplitCounts | None = Field(default=None, description="Records per split.")
    removed: dict[str, int] | None = Field(default=None, description="Records removed by each rule.")
    digest: str | None = Field(default=None, description="Content digest (`sha256:...`) of all splits.")
    statistics: dict[str, float] | None = Field(
        default=None, description="Summary statistics (length percentiles, label shares)."
    )
    artifact: Artifact | None = Field(
        default=None, description="Where the splits were written and their digest (as every producing kind)."
    )
    artifact_uri: str | None = Field(
        default=None, description="Where the splits were written (kept for compatibility: see `artifact.uri`)."
    )


class Dataset(KubeResource):
    """A cleaned, split dataset."""

    KIND: ClassVar[str] = "Dataset"
    PLURAL: ClassVar[str] = "datasets"
    SHORT_NAMES: ClassVar[list[str]] = ["kfds"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = bounded_printer_columns(
        [
            {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
            {"name": "Train", "type": "integer", "jsonPath": ".status.counts.train"},
            {"name": "Validation", "type": "integer", "jsonPath": ".status.counts.validation", "priority": 1},
            {"name": "Test", "type": "integer", "jsonPath": ".status.counts.test", "priority": 1},
            {"name": "Digest", "type": "string", "jsonPath": ".status.digest", "priority": 1},
        ]
    )

    kind: Literal["Dataset"] = Field(default="Dataset", description="Dataset.")
    spec: DatasetSpec = Field(description="Desired state.")
    status: DatasetStatus | None = Field(default=None, description="Observed state (set by the operator).")


    def stage(self) -> str:
        return "prepare"

    def references(self) -> list[SpecReference]:
        parent = self.spec.source.from_dataset
        if parent is None:
            return []
        return [SpecReference("parentDataset", "Dataset", parent.name, None, "spec.source.fromDataset")]
