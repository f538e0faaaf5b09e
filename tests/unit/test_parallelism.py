"""spec.distributed model parallelism: tensorParallel through DeepSpeed AutoTP, pipelineParallel refused.

The CEL rules in the generated CRDs (checked against a real API server in tests/cluster/test_api_server.py),
their pydantic twins, and the DeepSpeed config the operator and the trainer share.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge import crdgen
from kubeforge.api.v1alpha1 import KINDS
from kubeforge.api.v1alpha1.rlhfjob import TP_NEEDS_DPO
from kubeforge.api.v1alpha1.training import TP_NEEDS_FULL_TRAINING, TP_RULES
from kubeforge.api.v1alpha1.trainingjob import TrainingJobSpec
from kubeforge.deepspeed import get_deepspeed_config
from kubeforge.manifests import ManifestError, parse

SPECS: dict[str, dict[str, Any]] = {
    "TrainingJob": {"method": "sft", "model": {"uri": "org/model"}, "dataset": {"name": "d"}},
    "RewardModel": {"model": {"uri": "org/model"}, "dataset": {"name": "prefs"}},
    "RLHFJob": {"algorithm": "dpo", "policy": {"uri": "org/model"}, "dataset": {"name": "prefs"}},
}
TP2 = {"strategy": "deepspeed", "processesPerNode": 4, "tensorParallel": 2}


def _schema(kind: str) -> dict[str, Any]:
    crd = crdgen.crd(KINDS[kind])
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def _body(kind: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": {**SPECS[kind], **spec},
    }


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_generated_schema_carries_the_parallelism_rules(kind: str) -> None:
    spec = _schema(kind)
    dist = spec["properties"]["distributed"]
    rules = {r["rule"]: r for r in dist["x-kubernetes-validations"]}
    assert rules["self.pipelineParallel == 1"]["fieldPath"] == ".pipelineParallel"
    assert "no pipeline-parallel training loop" in rules["self.pipelineParallel == 1"]["message"]
    assert rules["self.tensorParallel == 1 || self.strategy == 'deepspeed'"]["fieldPath"] == ".tensorParallel"
    assert rules["self.tensorParallel == 1 || self.zeroStage <= 2"]["fieldPath"] == ".zeroStage"
    assert "(self.nodes * self.processesPerNode) % self.tensorParallel == 0" in rules
    assert all(rule in dist["x-kubernetes-validations"] for rule in TP_RULES)
    # the fields keep their range (old manifests with 1 stay valid) and say what they do
    assert dist["properties"]["tensorParallel"]["default"] == 1
    assert "AutoTP" in dist["properties"]["tensorParallel"]["description"]
    assert dist["properties"]["pipelineParallel"]["description"].startswith("Must be 1")
    # PEFT adapters cannot be split: a rule on the spec, where both fields are visible
    assert TP_NEEDS_FULL_TRAINING in spec["x-kubernetes-validations"]


def test_rlhf_schema_limits_tensor_parallel_to_dpo() -> None:
    rules = [r for r in _schema("RLHFJob")["x-kubernetes-validations"] if r["message"] == TP_NEEDS_DPO]
    assert len(rules) == 1 and rules[0]["fieldPath"] == ".distributed.tensorParallel"
    assert rules[0]["rule"].startswith("self.algorithm == 'dpo' || !has(self.distributed)")


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_tensor_parallel_with_deepspeed_is_valid(kind: str) -> None:
    obj: Any = parse(_body(kind, distributed=TP2))
    assert obj.spec.distributed.tensor_parallel == 2
    parse(_body(kind, distributed={**TP2, "zeroStage": 1, "offloadOptimizer": True}))
    parse(_body(kind, distributed=TP2, peft={"method": "freeze", "freezeLayers": 1}))


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("TrainingJob", {"distributed": {"strategy": "deepspeed", "pipelineParallel": 2}}, "no pipeline-parallel"),
    ("RewardModel", {"distributed": {"strategy": "deepspeed", "pipelineParallel": 4}}, "no pipeline-parallel"),
    (
        "TrainingJob",
        {"distributed": {"strategy": "ddp", "processesPerNode": 2, "tensorParallel": 2}},
        "tensorParallel > 1 needs strategy deepspeed",
    ),
    (
        "TrainingJob",
        {"distributed": {"strategy": "none", "tensorParallel": 2}},
        "tensorParallel > 1 needs strategy deepspeed",
    ),
    ("TrainingJob", {"distributed": {**TP2, "zeroStage": 3}}, "tensorParallel > 1 needs zeroStage 0-2"),
    ("TrainingJob", {"distributed": {**TP2, "processesPerNode": 3}}, "tensorParallel must divide"),
    ("TrainingJob", {"distributed": {**TP2, "nodes": 3, "processesPerNode": 1}}, "tensorParallel must divide"),
    ("TrainingJob", {"distributed": TP2, "peft": {"method": "lora"}}, "needs peft.method none or freeze"),
    ("RewardModel", {"distributed": TP2, "peft": {"method": "ia3"}}, "needs peft.method none or freeze"),
    ("RLHFJob", {"distributed": TP2, "peft": {"method": "lora"}}, "needs peft.method none or freeze"),
    (
        "RLHFJob",
        {"algorithm": "grpo", "reward": {"functions": [{"name": "length"}]}, "distributed": TP2},
        "needs algorithm dpo",
    ),
]


@pytest.mark.parametrize(("kind", "spec", "message"), INVALID)
def test_pydantic_twins_refuse_what_cel_refuses(kind: str, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(_body(kind, **spec))


def test_every_twin_message_is_a_cel_message() -> None:
    messages = {r["message"] for kind in SPECS for r in _all_rules(crdgen.crd(KINDS[kind]))}
    for _kind, _spec, fragment in INVALID:
        assert any(fragment in m for m in messages), fragment


def _all_rules(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return list(node.get("x-kubernetes-validations", [])) + [r for v in node.values() for r in _all_rules(v)]
    if isinstance(node, list):
        return [r for v in node for r in _all_rules(v)]
    return []


def _ds(**dist: Any) -> dict[str, Any]:
    spec = TrainingJobSpec.model_validate({**SPECS["TrainingJob"], "precision": "bf16", "distributed": dist})
    return get_deepspeed_config(spec)


def test_deepspeed_config_turns_on_autotp() -> None:
    cfg = _ds(**TP2)
    # vocab_parallel_lm_head false: TRL's fused head reads lm_head.weight, so the head must stay whole
    assert cfg["tensor_parallel"] == {"autotp_size": 2, "vocab_parallel_lm_head": False}
    # accelerate gathers AutoTP shards on save only with this flag, whatever the ZeRO stage
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_config_without_tensor_parallel() -> None:
    cfg = _ds(strategy="deepspeed", processesPerNode=2)
    assert "tensor_parallel" not in cfg
    assert "stage3_gather_16bit_weights_on_model_save" not in cfg["zero_optimization"]
    zero3 = _ds(strategy="deepspeed", processesPerNode=2, zeroStage=3, offloadParams=True)["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero3["offload_param"] == {"device": "cpu", "pin_memory": True}
