"""The v1alpha1 API: valid and invalid specs per kind, examples, generated CRDs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge import crdgen
from kubeforge.api.v1alpha1 import KINDS
from kubeforge.api.v1alpha1.base import MSG_NAME_LENGTH
from kubeforge.manifests import ManifestError, iter_documents, load, parse

ROOT = Path(__file__).resolve().parents[2]

MINIMAL: dict[str, dict[str, Any]] = {
    "Dataset": {"task": "text", "source": {"uris": ["file:///data/x.jsonl"]}},
    "TrainingJob": {"method": "sft", "model": {"uri": "org/model"}, "dataset": {"name": "d"}},
    "RewardModel": {"model": {"uri": "org/model"}, "dataset": {"name": "prefs"}},
    "RLHFJob": {
        "algorithm": "grpo",
        "policy": {"uri": "org/model"},
        "dataset": {"name": "prompts"},
        "reward": {"functions": [{"name": "length", "targetLength": 10}]},
    },
    "Evaluation": {
        "model": {"uri": "org/model"},
        "dataset": {"name": "d", "split": "test"},
        "taskType": "classification",
        "metrics": ["accuracy", "f1"],
    },
    "ModelDeployment": {"model": {"uri": "org/model"}},
}


def body(kind: str, **spec_updates: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL[kind])
    spec.update(spec_updates)
    return {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_minimal_specs_are_valid_and_round_trip(kind: str) -> None:
    obj = parse(body(kind))
    assert obj.kind == kind
    again = parse({**obj.to_wire(), "metadata": {"name": "x"}})
    assert again.to_wire() == obj.to_wire()


# (kind, spec updates, substring the error must contain: the field path or the rule)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("Dataset", {"task": "poetry"}, "spec.task"),
    ("Dataset", {"source": {}}, "exactly one of uris or fromDataset"),
    ("Dataset", {"source": {"uris": ["a"], "fromDataset": {"name": "b"}}}, "exactly one of uris or fromDataset"),
    ("Dataset", {"split": {"train": 0.5, "validation": 0.1, "test": 0.1}}, "sum to 1"),
    ("Dataset", {"split": {"train": 0.8, "validation": 0.1, "test": 0.1, "stratify": True}}, "stratify"),
    ("Dataset", {"processing": {"outliers": {"method": "zscore"}}}, "outliers needs task regression"),
    ("Dataset", {"processing": {"filters": {"minLength": 10, "maxLength": 5}}}, "minLength must be <= maxLength"),
    ("Dataset", {"format": "xlsx"}, "spec.format"),
    ("Dataset", {"sauce": {}}, "spec.sauce: unknown field"),
    ("TrainingJob", {"method": "rl"}, "spec.method"),
    ("TrainingJob", {"model": {}}, "exactly one of uri, ref or architecture"),
    ("TrainingJob", {"peft": {"method": "qlora"}}, "qlora needs a GPU"),
    ("TrainingJob", {"peft": {"method": "lora", "r": 0}}, "spec.peft.r"),
    ("TrainingJob", {"peft": {"method": "freeze"}}, "freezeLayers > 0"),
    ("TrainingJob", {"hyperparameters": {"learningRate": 0}}, "spec.hyperparameters.learningRate"),
    ("TrainingJob", {"hyperparameters": {"batchSize": "eight"}}, "spec.hyperparameters.batchSize"),
    ("TrainingJob", {"distributed": {"strategy": "ddp", "zeroStage": 4}}, "spec.distributed.zeroStage"),
    ("TrainingJob", {"distributed": {"nodes": 2}}, "needs strategy ddp or deepspeed"),
    ("TrainingJob", {"distributed": {"strategy": "ddp", "offloadOptimizer": True}}, "need strategy deepspeed"),
    ("TrainingJob", {"model": {"architecture": {"hiddenSize": 65, "numHeads": 4}}}, "divisible"),
    ("TrainingJob", {"resources": {"memory": "lots"}}, "spec.resources.memory"),
    ("TrainingJob", {"dataset": {"name": "Bad_Name"}}, "spec.dataset.name"),
    # Kubernetes quantities without a sign; label values where the operator writes a label or node selector.
    ("TrainingJob", {"resources": {"memory": "-4Gi"}}, "spec.resources.memory"),
    ("TrainingJob", {"resources": {"cpu": "1.2.3"}}, "spec.resources.cpu"),
    ("TrainingJob", {"resources": {"cpu": "2 cores"}}, "spec.resources.cpu"),
    ("TrainingJob", {"resources": {"gpuType": "NVIDIA H100 80GB"}}, "spec.resources.gpuType"),
    ("TrainingJob", {"resources": {"queueName": "team/a"}}, "spec.resources.queueName"),
    ("TrainingJob", {"resources": {"queueName": "q" * 64}}, "spec.resources.queueName"),
    ("TrainingJob", {"resources": {"nodeSelector": {"pool": "a b"}}}, "spec.resources.nodeSelector.pool"),
    # Free strings are bounded.
    ("TrainingJob", {"model": {"uri": "org/" + "m" * 4096}}, "spec.model.uri"),
    ("TrainingJob", {"output": {"uri": "s3://bucket/" + "k" * 4096}}, "spec.output.uri"),
    ("TrainingJob", {"tokenizer": {"uri": "t" * 4097}}, "spec.tokenizer.uri"),
    ("RewardModel", {"model": {"architecture": {}}}, "pretrained base"),
    ("RLHFJob", {"algorithm": "ppo"}, "spec.algorithm"),
    ("RLHFJob", {"reward": None}, "need reward.model"),
    ("RLHFJob", {"algorithm": "dpo"}, "remove reward"),
    ("RLHFJob", {"generation": {"numGenerations": 1}}, "spec.generation.numGenerations"),
    ("RLHFJob", {"reward": {"uri": "s3://rm/" + "r" * 4096}}, "spec.reward.uri"),
    ("Evaluation", {"metrics": ["mse"]}, "metrics must suit taskType"),
    ("Evaluation", {"metrics": []}, "spec.metrics"),
    ("Evaluation", {"thresholds": [{"metric": "bleu", "min": 1}]}, "must also be listed in metrics"),
    ("Evaluation", {"thresholds": [{"metric": "accuracy"}]}, "needs min or max"),
    ("ModelDeployment", {"quantization": {"mode": "int8-static"}}, "needs quantization.calibration"),
    ("ModelDeployment", {"backend": "tensorrt"}, "tensorrt needs a GPU"),
    (
        "ModelDeployment",
        {"triton": {"maxBatchSize": 8, "dynamicBatching": {"preferredBatchSizes": [4, 16]}}},
        "preferredBatchSizes must each be between 1 and maxBatchSize",
    ),
    ("ModelDeployment", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must be <= maxReplicas"),
    ("ModelDeployment", {"export": {"opset": 9}}, "spec.export.opset"),
    ("ModelDeployment", {"triton": {"image": "i" * 4097}}, "spec.triton.image"),
    ("ModelDeployment", {"rollout": {"strategy": "canary", "canaryWeight": 100}}, "spec.rollout.canaryWeight"),
]


@pytest.mark.parametrize(("kind", "updates", "expected"), INVALID, ids=[f"{k}-{e}" for k, _, e in INVALID])
def test_invalid_specs_name_the_field(kind: str, updates: dict[str, Any], expected: str) -> None:
    spec = body(kind, **updates)
    spec["spec"] = {k: v for k, v in spec["spec"].items() if v is not None}
    with pytest.raises(ManifestError) as err:
        parse(spec, "test.yaml#0")
    text = str(err.value)
    assert expected in text, text
    assert text.startswith("test.yaml#0")


@pytest.mark.parametrize("value", ["1", "250m", "0.5", ".5", "4Gi", "512Mi", "1e3", "2.5k", "100u"])
def test_resource_quantities_accepted(value: str) -> None:
    parse(body("TrainingJob", resources={"cpu": value, "memory": value}))


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_object_names_at_most_63_characters(kind: str) -> None:
    """Names become Job names and the kubeforge.io/owner label value: CEL at the CRD root, pydantic twin."""
    parse({**body(kind), "metadata": {"name": "n" * 63}})
    with pytest.raises(ManifestError, match=r"metadata: metadata\.name must be at most 63 characters"):
        parse({**body(kind), "metadata": {"name": "n" * 64}})
    rules = crdgen.crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert {"rule": "size(self.metadata.name) <= 63", "message": MSG_NAME_LENGTH} in rules


def test_wrong_kind_and_api_version() -> None:
    with pytest.raises(ManifestError, match=r"kind: must be one of"):
        parse({**body("Dataset"), "kind": "Datasett"})
    with pytest.raises(ManifestError, match=r"apiVersion: must be kubeforge\.io/v1alpha1"):
        parse({**body("Dataset"), "apiVersion": "v1"})
    with pytest.raises(ManifestError, match=r"metadata\.name: required"):
        parse({**body("Dataset"), "metadata": {}})


def test_every_example_validates() -> None:
    resources = load([ROOT / "examples"])
    kinds = {r.kind for r in resources}
    assert kinds == set(KINDS), f"examples must cover every kind, missing {set(KINDS) - kinds}"


def test_pipeline_example_is_a_full_chain_in_apply_order() -> None:
    docs = list(iter_documents([ROOT / "examples" / "pipeline"]))
    order = [d.body["kind"] for d in docs]
    first = {k: order.index(k) for k in KINDS}
    assert list(dict.fromkeys(order)) == sorted(first, key=first.__getitem__)
    assert order.index("Dataset") < order.index("TrainingJob") < order.index("RewardModel")
    assert order.index("RLHFJob") < order.index("Evaluation") < order.index("ModelDeployment")


def test_crds_are_in_sync_with_models() -> None:
    assert crdgen.stale(ROOT / "crds") == [], "crds/ is out of date: run `kubeforge crds`"


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, prop in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        if name != "metadata" and not prop.get("description"):
            missing.append(here)
        missing += _walk(prop, here)
        if "items" in prop:
            missing += _walk(prop["items"], here + "[]")
        if isinstance(prop.get("additionalProperties"), dict):
            missing += _walk(prop["additionalProperties"], here + "{}")
    return missing


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_schema_is_structural_and_documented(kind: str) -> None:
    crd = crdgen.crd(KINDS[kind])
    text = yaml.safe_dump(crd)
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "additionalProperties: false", "title:"):
        assert forbidden not in text, f"{kind} CRD contains {forbidden}"
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert _walk(schema, kind) == []
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    assert version["subresources"] == {"status": {}}
    assert "kubeforge" in crd["spec"]["names"]["categories"]
    assert crd["spec"]["names"]["shortNames"]
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert ("Succeeded" in cols) or ("Ready" in cols)
    assert cols[-1] == "Age"


def test_pod_overrides_are_closed() -> None:
    """An allow-list (tests/unit/test_pod_overrides.py): unknown fields are rejected, not passed through."""
    schema = crdgen.crd(KINDS["TrainingJob"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    overrides = schema["properties"]["spec"]["properties"]["resources"]["properties"]["podOverrides"]
    assert "x-kubernetes-preserve-unknown-fields" not in overrides
    assert overrides["type"] == "object" and "hostNetwork" not in overrides["properties"]


def test_cel_rules_mirror_python_rules() -> None:
    """Every model-level CEL rule has a pydantic twin raising the same message."""
    messages: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            messages.extend(r["message"] for r in node.get("x-kubernetes-validations", []))
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    for model in KINDS.values():
        collect(crdgen.crd(model))
    text = "\n".join(messages)
    for _kind, _updates, expected in INVALID:
        if " " in expected and not expected.startswith("spec."):
            assert expected in text, f"message {expected!r} has no CEL twin in the CRDs"
