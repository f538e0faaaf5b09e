"""The `prepare` stage: read raw records, clean them as the Dataset spec says, split, write parquet.

Rules run in spec.processing field order (normalize, pii, filters, dedup, outliers, labelMap,
chatTemplate); every rule that removes records is counted in `stats.json` and in status.removed,
so an empty result can be explained rule by rule. Everything is deterministic: the same input and
spec give byte-identical splits and the same content digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from kubeforge.api.v1alpha1.dataset import (
    TASK_COLUMNS,
    Dataset,
    DatasetSpec,
    DatasetTask,
    Normalize,
    Pii,
)
from kubeforge.stage import StageConfig, StageResult

from . import dataio
from .runtime import ProgressReporter, StageError, artifact_for, digest_path, lineage_of, write_lineage

Record = dict[str, Any]
DROP_LABEL = "__drop__"
# Fields holding free text that normalisation and PII scrubbing rewrite.
TEXT_FIELDS = ("text", "prompt", "completion", "chosen", "rejected")


# --------------------------------------------------------------------------------------------- reading


def _source_records(config: StageConfig, spec: DatasetSpec) -> list[Record]:
    """Raw records from spec.source (files/globs/hf://) or from the parent Dataset's splits."""
    src = spec.source
    if src.from_dataset is not None:
        parent = config.inputs.get("parentDataset")
        if parent is None:
            raise StageError(
                f"spec.source.fromDataset {src.from_dataset.name!r} was not resolved (no parentDataset input)",
                reason="DependencyMissing",
            )
        records = dataio.read_split_records(parent.uri, src.from_dataset.split)
        return records[: spec.max_records] if spec.max_records else records
    out: list[Record] = []
    for uri in src.uris or []:
        left = None if spec.max_records is None else spec.max_records - len(out)
        if left == 0:
            break
        out.extend(
            dataio.read_records(uri, spec.format, hf_config=src.hf_config, hf_split=src.hf_split, limit=left)
        )
    return out


def map_columns(records: list[Record], spec: DatasetSpec) -> list[Record]:
    """Rename source columns to the task's fields; a missing column is a one-line, fixable error."""
    fields = TASK_COLUMNS[spec.task]
    mapping = {f: getattr(spec.columns, f) or f for f in fields}
    available: list[str] = sorted({k for r in records for k in r})
    for field, column in mapping.items():
        if column not in available:
            hint = (
                f"set spec.columns.{field} to the source column holding the {field}"
                if column == field
                else f"spec.columns.{field} names {column!r}; fix it"
            )
            raise StageError(
                f"column {column!r} (task {spec.task.value} field {field!r}) not found in the source data; "
                f"available columns: {available}; {hint}",
                reason="MissingColumn",
            )
    return [{f: r.get(c) for f, c in mapping.items()} for r in records]


def _coerce(records: list[Record], task: DatasetTask) -> tuple[list[Record], int]:
    """Give every field its task type; records with a missing (null) field are dropped and counted."""
    out: list[Record] = []
    missing = 0
    for i, r in enumerate(records):
        if any(v is None for v in r.values()):
            missing += 1
            continue
        rec = dict(r)
        for f in TEXT_FIELDS:
            if f in rec:
                rec[f] = str(rec[f])
        if task == DatasetTask.CHAT:
            rec["messages"] = _messages(rec["messages"], i)
        elif task == DatasetTask.REGRESSION:
            try:
                rec["value"] = float(rec["value"])
            except (TypeError, ValueError) as exc:
                raise StageError(
                    f"record {i}: regression value {rec['value']!r} is not a number; fix the data or "
                    "spec.columns.value",
                    reason="InvalidData",
                ) from exc
            if not math.isfinite(rec["value"]):
                missing += 1
                continue
        out.append(rec)
    if task == DatasetTask.CLASSIFICATION:
        labels = [r["label"] for r in out]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
            for r in out:  # one Arrow type per column: mixed or non-integer labels become strings
                r["label"] = str(r["label"])
    return out, missing


def _messages(value: Any, index: int) -> list[dict[str, str]]:
    """Chat messages as a list of {role, content} (JSON strings from CSV are parsed)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StageError(f"record {index}: messages is a string but not JSON ({exc.msg})") from exc
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise StageError(
            f"record {index}: messages must be a list of {{role, content}} objects; check spec.columns.messages",
            reason="InvalidData",
        )
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


# ---------------------------------------------------------------------------------------- text helpers


def content(record: Record) -> str:
    """The record's text as filters, dedup and statistics see it (all text fields, labels excluded)."""
    if "messages" in record:  # chat: the messages (a rendered `text` is derived from them)
        return "\n".join(str(m["content"]) for m in record["messages"])
    return "\n".join(str(record[f]) for f in TEXT_FIELDS if f in record)


def _map_text(record: Record, fn: Callable[[str], str]) -> Record:
    out = dict(record)
    for f in TEXT_FIELDS:
        if f in out:
            out[f] = fn(out[f])
    if "messages" in out:
        out["messages"] = [{"role": m["role"], "content": fn(m["content"])} for m in out["messages"]]
    return out


_WS = re.compile(r"\s+")


def normalizer(spec: Normalize) -> Callable[[str], str]:
    """The text normalisation function the spec describes."""

    def norm(s: str) -> str:
        if spec.unicode != "none":
            s = unicodedata.normalize(spec.unicode, s)
        if spec.lowercase:
            s = s.lower()
        if spec.collapse_whitespace:
            s = _WS.sub(" ", s).strip()
        return s

    return norm


# ------------------------------------------------------------------------------------------------ PII


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    # credit cards first (13-19 digits, Luhn-checked), so the phone rule does not eat them
    "credit-card": re.compile(r"(?<![\w.])(?:\d[ -]?){12,18}\d(?![\w.])"),
    # well-known token formats, and the value of `api_key=...`/`password: ...` style assignments
    "key": re.compile(
        r"(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abprs]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,})"
        r"|(?i:\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|token|password|passwd)\b[\"']?\s*[:=]\s*[\"']?)"
        r"(?P<value>[^\s\"'&,;]{6,})"
    ),
    "email": re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "ip": re.compile(
        rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
    ),
    "phone": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?!\w)"
    ),
}
PII_ORDER = ("credit-card", "key", "email", "ip", "phone")


def pii_scrubber(spec: Pii) -> tuple[Callable[[str], str], Counter[str]]:
    """A scrubbing function for the enabled kinds, and a counter of replacements it made."""
    hits: Counter[str] = Counter()
    kinds = [k for k in PII_ORDER if k in spec.kinds]

    def scrub(s: str) -> str:
        for kind in kinds:
            repl = spec.replacement.replace("{kind}", kind.upper().replace("-", "_"))

            def sub(m: re.Match[str], kind: str = kind, repl: str = repl) -> str:
                if kind == "credit-card" and not _luhn_ok(re.sub(r"\D", "", m.group(0))):
                    return m.group(0)
                hits[kind] += 1
                if m.groupdict().get("value") is not None:  # keep `api_key=`, replace only the secret
                    return m.group(0)[: m.start("value") - m.start(0)] + repl
                return repl

            s = PII_PATTERNS[kind].sub(sub, s)
        return s

    return scrub, hits


# ----------------------------------------------------------------------------------------- the rules


class Pipeline:
    """Runs the rules in order and keeps the before/after counts for stats.json."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.steps: list[dict[str, Any]] = []
        self.removed: dict[str, int] = {}

    def keep(self, rule: str, predicate: Callable[[Record], bool]) -> None:
        """Keep records the predicate accepts; count the rest under `rule`."""
        before = len(self.records)
        self.records = [r for r in self.records if predicate(r)]
        self.note(rule, before)

    def note(self, rule: str, before: int, **extra: Any) -> None:
        """Record a step's counts."""
        after = len(self.records)
        self.steps.append({"rule": rule, "before": before, "after": after, "removed": before - after, **extra})
        self.removed[rule] = self.removed.get(rule, 0) + before - after


def _compile(patterns: list[str], field: str) -> list[re.Pattern[str]]:
    out = []
    for i, p in enumerate(patterns):
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise StageError(f"spec.processing.filters.{field}[{i}] {p!r} is not a valid regex: {exc}") from exc
    return out


def _near_duplicates(pipe: Pipeline, threshold: float, num_perm: int, ngram: int) -> None:
    """MinHash + LSH: drop a record whose estimated Jaccard similarity to a kept one reaches threshold."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: list[Record] = []
    hashes: dict[str, MinHash] = {}
    before = len(pipe.records)
    for i, r in enumerate(pipe.records):
        text = content(r)
        shingles = {text[j : j + ngram] for j in range(max(1, len(text) - ngram + 1))}
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in sorted(shingles)])
        if any(hashes[k].jaccard(m) >= threshold for k in lsh.query(m)):
            continue
        key = str(i)
        lsh.insert(key, m)
        hashes[key] = m
        kept.append(r)
    pipe.records = kept
    pipe.note("nearDuplicate", before)


def _outliers(pipe: Pipeline, method: str, k: float) -> None:
    values = np.array([r["value"] for r in pipe.records], dtype=float)
    before = len(pipe.records)
    if len(values) == 0:
        pipe.note("outliers", before)
        return
    if method == "zscore":
        std = values.std()
        keep = np.ones(len(values), bool) if std == 0 else np.abs(values - values.mean()) / std <= k
    else:
        q1, q3 = np.percentile(values, [25, 75])
        iqr = q3 - q1
        keep = (values >= q1 - k * iqr) & (values <= q3 + k * iqr)
    pipe.records = [r for r, ok in zip(pipe.records, keep, strict=True) if ok]
    pipe.note("outliers", before)


def _label_map(pipe: Pipeline, mapping: dict[str, str]) -> None:
    before = len(pipe.records)
    out = []
    for r in pipe.records:
        new = mapping.get(str(r["label"]), str(r["label"]))
        if new != DROP_LABEL:
            out.append(r | {"label": new})
    pipe.records = out
    pipe.note("labelMap", before)


def _chat_template(pipe: Pipeline, template: str) -> None:
    """Render messages into `text` with the same sandboxed Jinja settings transformers uses."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        tmpl = env.from_string(template)
    except TemplateError as exc:
        raise StageError(f"spec.processing.chatTemplate is not a valid Jinja template: {exc}") from exc
    before = len(pipe.records)
    out = []
    for i, r in enumerate(pipe.records):
        try:
            text = tmpl.render(messages=r["messages"], add_generation_prompt=False, bos_token="", eos_token="")
        except TemplateError as exc:
            raise StageError(f"spec.processing.chatTemplate failed on record {i}: {exc}") from exc
        out.append(r | {"text": text})
    pipe.records = out
    pipe.note("chatTemplate", before)


def process(records: list[Record], spec: DatasetSpec) -> tuple[list[Record], Pipeline, dict[str, int]]:
    """Apply spec.processing in field order; returns the kept records, the pipeline log and PII hits."""
    proc = spec.processing
    records, missing = _coerce(records, spec.task)
    pipe = Pipeline(records)
    pipe.steps.append(
        {"rule": "missingValues", "before": len(records) + missing, "after": len(records), "removed": missing}
    )
    pipe.removed["missingValues"] = missing

    norm = normalizer(proc.normalize)
    before = len(pipe.records)
    pipe.records = [_map_text(r, norm) for r in pipe.records]
    pipe.note("normalize", before)

    pii_hits: Counter[str] = Counter()
    if proc.pii.enabled:
        scrub, pii_hits = pii_scrubber(proc.pii)
        before = len(pipe.records)
        pipe.records = [_map_text(r, scrub) for r in pipe.records]
        pipe.note("pii", before, replaced=dict(sorted(pii_hits.items())))

    f = proc.filters
    if f.min_length is not None:
        lo = f.min_length
        pipe.keep("minLength", lambda r: len(content(r)) >= lo)
    if f.max_length is not None:
        hi = f.max_length
        pipe.keep("maxLength", lambda r: len(content(r)) <= hi)
    if f.include_regex:
        inc = _compile(f.include_regex, "includeRegex")
        pipe.keep("includeRegex", lambda r: all(p.search(content(r)) for p in inc))
    if f.exclude_regex:
        exc = _compile(f.exclude_regex, "excludeRegex")
        pipe.keep("excludeRegex", lambda r: not any(p.search(content(r)) for p in exc))

    if proc.dedup.exact:
        seen: set[str] = set()

        def first(r: Record) -> bool:
            h = hashlib.sha256(content(r).encode("utf-8")).hexdigest()
            if h in seen:
                return False
            seen.add(h)
            return True

        pipe.keep("exactDuplicate", first)
    near = proc.dedup.near
    if near.enabled:
        _near_duplicates(pipe, near.threshold, near.num_perm, near.ngram)

    if spec.task == DatasetTask.REGRESSION and proc.outliers.method != "none":
        _outliers(pipe, proc.outliers.method, proc.outliers.threshold)
    if spec.task == DatasetTask.CLASSIFICATION and proc.label_map:
        _label_map(pipe, proc.label_map)
    if spec.task == DatasetTask.CHAT and proc.chat_template:
        _chat_template(pipe, proc.chat_template)
    return pipe.records, pipe, dict(pii_hits)


# ---------------------------------------------------------------------------------------------- split


def _counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Records per split for n records; train gets the remainder (and at least one record)."""
    n_val = math.floor(n * fractions[1] + 0.5)
    n_test = math.floor(n * fractions[2] + 0.5)
    while n_val + n_test >= n and n > 0:  # keep at least one training record
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def split(records: list[Record], spec: DatasetSpec) -> dict[str, list[Record]]:
    """Seeded shuffle into train/validation/test; with stratify, each label is split on its own."""
    s = spec.split
    fractions = (s.train, s.validation, s.test)
    rng = np.random.default_rng(s.seed)
    groups: list[list[int]]
    if s.stratify:
        by_label: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_label.setdefault(str(r["label"]), []).append(i)
        groups = [by_label[k] for k in sorted(by_label)]
    else:
        groups = [list(range(len(records)))]
    parts: dict[str, list[int]] = {name: [] for name in dataio.SPLITS}
    for idx in groups:
        order = [idx[j] for j in rng.permutation(len(idx))]
        n_train, n_val, _ = _counts(len(order), fractions)
        parts["train"] += order[:n_train]
        parts["validation"] += order[n_train : n_train + n_val]
        parts["test"] += order[n_train + n_val :]
    out = {}
    for name, idx in parts.items():
        if s.stratify:  # interleave labels inside each split
            idx = [idx[j] for j in rng.permutation(len(idx))]
        out[name] = [records[i] for i in idx]
    return out


# ---------------------------------------------------------------------------------------------- stats


def content_digest(splits: dict[str, list[Record]]) -> str:
    """`sha256:` over the canonical JSON of every record of every split (independent of parquet bytes)."""
    h = hashlib.sha256()
    for name in dataio.SPLITS:
        h.update(name.encode() + b"\0")
        for r in splits[name]:
            h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return "sha256:" + h.hexdigest()


def statistics(records: list[Record], task: DatasetTask) -> tuple[dict[str, Any], dict[str, float]]:
    """Length distribution and label balance / target summary: (nested for stats.json, flat for status)."""
    lengths = np.array([len(content(r)) for r in records], dtype=float)
    nested: dict[str, Any] = {}
    flat: dict[str, float] = {}
    if len(lengths):
        dist = {
            "min": float(lengths.min()),
            "max": float(lengths.max()),
            "mean": float(lengths.mean()),
            "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)),
        }
        nested["length"] = dist
        flat.update({f"length.{k}": round(v, 4) for k, v in dist.items()})
    if task == DatasetTask.CLASSIFICATION and records:
        counts = Counter(str(r["label"]) for r in records)
        nested["labels"] = dict(sorted(counts.items()))
        for label, c in sorted(counts.items()):
            flat[f"label.{label}"] = round(c / len(records), 6)
    if task == DatasetTask.REGRESSION and records:
        values = np.array([r["value"] for r in records], dtype=float)
        target = {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                  "std": float(values.std())}
        nested["value"] = target
        flat.update({f"value.{k}": round(v, 6) for k, v in target.items()})
    return nested, flat


def _explain_empty(pipe: Pipeline, n_input: int) -> str:
    removed = ", ".join(f"{s['rule']} removed {s['removed']}" for s in pipe.steps if s["removed"])
    return (
        f"no records left for the train split: read {n_input}, {removed or 'nothing was removed'}; "
        "loosen spec.processing (filters/dedup/outliers/labelMap) or add data"
    )


# ------------------------------------------------------------------------------------------------ run


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Read, clean, split and write the Dataset; returns counts, removals, statistics and digests."""
    resource = cast(Dataset, config.typed())
    spec = resource.spec
    total_steps = 4
    reporter.update(step=0, total_steps=total_steps, force=True)

    raw = _source_records(config, spec)
    n_input = len(raw)
    if n_input == 0:
        raise StageError("the source yielded no records; check spec.source", reason="EmptyDataset")
    records = map_columns(raw, spec)
    reporter.update(step=1, total_steps=total_steps)

    records, pipe, pii_hits = process(records, spec)
    if not records:
        raise StageError(_explain_empty(pipe, n_input), reason="EmptyDataset")
    reporter.update(step=2, total_steps=total_steps)

    splits = split(records, spec)
    if not splits["train"]:
        raise StageError(_explain_empty(pipe, n_input), reason="EmptyDataset")
    columns = list(TASK_COLUMNS[spec.task])
    if spec.task == DatasetTask.CHAT and spec.processing.chat_template:
        columns.append("text")
    schema = dataio.schema_for(records, columns)
    digest = content_digest(splits)
    nested, flat = statistics(records, spec.task)
    counts = {"input": n_input, **{name: len(rs) for name, rs in splits.items()}}
    stats_body = {
        "task": spec.task.value,
        "counts": counts,
        "steps": pipe.steps,
        "removed": pipe.removed,
        "pii": pii_hits,
        "statistics": nested,
        "splitStatistics": {name: statistics(rs, spec.task)[0] for name, rs in splits.items()},
        "digest": digest,
    }
    with dataio.staged_output(config.output_uri) as out:
        for name, rs in splits.items():
            dataio.write_split(out, name, rs, schema)
        (out / "stats.json").write_text(json.dumps(stats_body, indent=2, sort_keys=True))
        reporter.update(step=3, total_steps=total_steps)
        if dataio.is_local(config.output_uri):
            artifact = artifact_for(config.output_uri)
            write_lineage(config, artifact)
        else:
            from kubeforge.api.v1alpha1.common import Artifact

            d, size = digest_path(out)
            artifact = Artifact(uri=config.output_uri, digest=d, size_bytes=size)
            write_lineage(config.model_copy(update={"output_uri": str(out)}), artifact)
    reporter.update(step=total_steps, total_steps=total_steps, force=True)
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    return StageResult(
        succeeded=True,
        message=f"prepared {spec.task.value} dataset: {summary}",
        artifact=artifact,
        lineage=lineage_of(config),
        details={
            "counts": counts,
            "removed": pipe.removed,
            "statistics": flat,
            "digest": digest,
            "artifactUri": config.output_uri,
        },
    )
