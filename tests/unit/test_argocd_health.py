"""Argo CD health checks: run the real Lua (Lua 5.1, the dialect of Argo CD's gopher-lua) on sample objects.

Every generated per-kind script is executed, table-driven, against every condition combination the
operator writes, so a change to health.lua that breaks a mapping fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml
from kubeforge.api.v1alpha1 import KINDS

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "argocd"
BOUNDED = ["Dataset", "TrainingJob", "RewardModel", "RLHFJob", "Evaluation"]


def run_health(kind: str, obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run argocd/health/<kind>.lua the way Argo CD does: a global `obj`, the script returns `hs`."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    body = script if script is not None else (ARGOCD / "health" / f"{kind.lower()}.lua").read_text()
    fn = lua.eval("function(src, o) obj = o; local f = assert(loadstring(src)); return f() end")
    hs = fn(body, lua.table_from(obj, recursive=True))
    assert hs is not None, f"{kind}: health script returned nothing"
    return {k: hs[k] for k in ("status", "message") if hs[k] is not None}


def cond(ctype: str, status: str, reason: str = "", message: str = "", gen: int | None = 3) -> dict[str, Any]:
    c: dict[str, Any] = {"type": ctype, "status": status, "reason": reason, "message": message}
    if gen is not None:
        c["observedGeneration"] = gen
    return c


def make(kind: str, conditions: list[dict[str, Any]] | None, generation: int = 3,
         observed: int | None = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if conditions is not None:
        obj["status"] = {"conditions": conditions}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


# (case id, conditions, generation, observedGeneration, expected status, substring of the message)
BOUNDED_CASES: list[tuple[str, list[dict[str, Any]] | None, int, int | None, str, str]] = [
    ("no-status", None, 1, None, "Progressing", "Waiting for the Kubeforge operator"),
    ("empty-conditions", [], 1, 1, "Progressing", "Waiting for the Kubeforge operator"),
    ("no-observed-generation", [cond("Succeeded", "True")], 3, None, "Progressing", "observedGeneration"),
    ("stale-top-level", [cond("Succeeded", "True", "JobSucceeded")], 4, 3, "Progressing", "generation 4"),
    ("stale-condition", [cond("Succeeded", "True", "JobSucceeded", gen=2)], 3, 3, "Progressing", "generation 2"),
    ("succeeded", [cond("DependenciesReady", "True"), cond("JobCreated", "True"),
                   cond("Succeeded", "True", "JobSucceeded", "artifact written")], 3, 3, "Healthy", "artifact written"),
    ("failed", [cond("DependenciesReady", "True"), cond("JobCreated", "True"),
                cond("Succeeded", "False", "BackoffLimitExceeded", "Job x-train-g3 failed: OOMKilled")],
     3, 3, "Degraded", "OOMKilled"),
    ("invalid-spec", [cond("Succeeded", "False", "InvalidSpec", "spec.peft.method: qlora needs a GPU")],
     3, 3, "Degraded", "spec.peft.method"),
    ("waiting-deps", [cond("DependenciesReady", "False", "WaitingForDependencies", "waiting for Dataset/raw"),
                      cond("Succeeded", "Unknown", "WaitingForDependencies", "waiting for Dataset/raw")],
     3, 3, "Progressing", "Dataset/raw"),
    ("deps-missing-no-primary", [cond("DependenciesReady", "False", "DependencyNotFound", "Dataset/raw")],
     3, 3, "Progressing", "Dataset/raw"),
    ("deps-failed", [cond("DependenciesReady", "False", "DependencyFailed", "TrainingJob/sft failed"),
                     cond("Succeeded", "False", "DependencyFailed", "TrainingJob/sft failed")],
     3, 3, "Degraded", "DependencyFailed"),
    ("deps-failed-unknown", [cond("DependenciesReady", "False", "DependencyFailed", "TrainingJob/sft failed"),
                             cond("Succeeded", "Unknown", "Pending")], 3, 3, "Degraded", "DependencyFailed"),
    ("deps-suspended", [cond("DependenciesReady", "False", "Suspended", "paused by user")],
     3, 3, "Suspended", "paused by user"),
    ("running", [cond("DependenciesReady", "True"), cond("JobCreated", "True", "JobCreated", "job x-train"),
                 cond("Succeeded", "Unknown", "Running", "step 40/100")], 3, 3, "Progressing", "step 40/100"),
    ("job-created-only", [cond("DependenciesReady", "True"), cond("JobCreated", "True", "JobCreated", "job x")],
     3, 3, "Progressing", "job x"),
]


@pytest.mark.parametrize("kind", BOUNDED)
@pytest.mark.parametrize(("case", "conditions", "generation", "observed", "expected", "text"),
                         BOUNDED_CASES, ids=[c[0] for c in BOUNDED_CASES])
def test_bounded_kinds(kind: str, case: str, conditions: list[dict[str, Any]] | None, generation: int,
                       observed: int | None, expected: str, text: str) -> None:
    hs = run_health(kind, make(kind, conditions, generation, observed))
    assert hs["status"] == expected, f"{kind}/{case}: {hs}"
    assert text in hs.get("message", ""), f"{kind}/{case}: message {hs.get('message')!r} lacks {text!r}"


EVAL_CASES = [
    ("passed", [cond("Succeeded", "True", "JobSucceeded"), cond("Passed", "True", "ThresholdsMet", "accuracy 0.91")],
     "Healthy", "JobSucceeded"),
    ("thresholds-failed", [cond("Succeeded", "True", "JobSucceeded"),
                           cond("Passed", "False", "ThresholdsFailed", "accuracy 0.41 < 0.8")],
     "Degraded", "accuracy 0.41 < 0.8"),
    ("no-thresholds", [cond("Succeeded", "True", "JobSucceeded", "report written")], "Healthy", "report written"),
    ("running-passed-unknown", [cond("Succeeded", "Unknown", "Running"), cond("Passed", "Unknown")],
     "Progressing", "Running"),
]


@pytest.mark.parametrize(("case", "conditions", "expected", "text"), EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_evaluation_passed(case: str, conditions: list[dict[str, Any]], expected: str, text: str) -> None:
    hs = run_health("Evaluation", make("Evaluation", conditions))
    assert hs["status"] == expected, f"Evaluation/{case}: {hs}"
    assert text in hs["message"]


def test_passed_false_only_matters_for_evaluation() -> None:
    """Other kinds never carry Passed; if one did, Succeeded alone decides."""
    conds = [cond("Succeeded", "True", "JobSucceeded"), cond("Passed", "False", "ThresholdsNotMet")]
    assert run_health("TrainingJob", make("TrainingJob", conds))["status"] == "Healthy"


MD_CASES: list[tuple[str, list[dict[str, Any]] | None, int, int | None, str, str]] = [
    ("no-status", None, 1, None, "Progressing", "Waiting"),
    ("stale", [cond("Ready", "True", "Serving", gen=1)], 2, 1, "Progressing", "generation 2"),
    ("ready", [cond("DependenciesReady", "True"), cond("Ready", "True", "Serving", "v3 on 2 replicas")],
     3, 3, "Healthy", "v3 on 2 replicas"),
    ("gate-pending-ready", [cond("Ready", "False", "GatePending", "Evaluation/mmlu not Passed yet")],
     3, 3, "Suspended", "Evaluation/mmlu"),
    ("gate-pending-deps", [cond("DependenciesReady", "False", "GatePending", "waiting for Evaluation/mmlu")],
     3, 3, "Suspended", "GatePending"),
    ("gate-failed", [cond("Ready", "False", "GateFailed", "Evaluation/mmlu Passed=False")],
     3, 3, "Degraded", "GateFailed"),
    ("conversion-failed", [cond("Ready", "False", "ConversionFailed", "max logit diff 0.3 > 0.001")],
     3, 3, "Degraded", "max logit diff"),
    ("rolling-out", [cond("Ready", "False", "Progressing", "waiting for Triton pods of v2 to become Ready")],
     3, 3, "Progressing", "Triton pods"),
    ("canary", [cond("Ready", "True", "CanaryInProgress", "serving v1; canary v2 at 20%")],
     3, 3, "Healthy", "canary v2"),
    ("invalid", [cond("Ready", "False", "InvalidSpec", "spec.backend: tensorrt needs a GPU")],
     3, 3, "Degraded", "tensorrt"),
    ("upstream-failed", [cond("DependenciesReady", "False", "DependencyFailed", "TrainingJob/sft failed"),
                         cond("Ready", "False", "DependencyFailed", "TrainingJob/sft failed")],
     3, 3, "Degraded", "TrainingJob/sft"),
    ("converting", [cond("DependenciesReady", "True"), cond("JobCreated", "True"),
                    cond("Ready", "Unknown", "Converting", "exporting to ONNX")], 3, 3, "Progressing", "ONNX"),
    ("waiting-model", [cond("DependenciesReady", "False", "WaitingForDependencies", "TrainingJob/sft running"),
                       cond("Ready", "False", "WaitingForDependencies", "TrainingJob/sft running")],
     3, 3, "Progressing", "TrainingJob/sft"),
]


@pytest.mark.parametrize(("case", "conditions", "generation", "observed", "expected", "text"),
                         MD_CASES, ids=[c[0] for c in MD_CASES])
def test_modeldeployment(case: str, conditions: list[dict[str, Any]] | None, generation: int,
                         observed: int | None, expected: str, text: str) -> None:
    hs = run_health("ModelDeployment", make("ModelDeployment", conditions, generation, observed))
    assert hs["status"] == expected, f"ModelDeployment/{case}: {hs}"
    assert text in hs["message"]


def test_every_operator_warning_reason_is_degraded() -> None:
    """The operator's own list of failure reasons (Warning events) must all read Degraded in Argo CD."""
    for reason in sorted(operator_warning_reasons()):
        hs = run_health("ModelDeployment", make("ModelDeployment", [cond("Ready", "False", reason, "x")]))
        assert hs["status"] == "Degraded", f"ModelDeployment Ready=False reason {reason}: {hs}"
        deps = [cond("DependenciesReady", "False", reason, "x"), cond("Succeeded", "Unknown", "Pending")]
        if reason != "ThresholdsFailed":  # a Passed reason, never on DependenciesReady
            assert run_health("TrainingJob", make("TrainingJob", deps))["status"] == "Degraded", reason


def operator_warning_reasons() -> set[str]:
    """WARNING_REASONS from kubeforge/controllers/common.py, read from source.

    Not imported: importing the controllers registers kopf handlers and imports the kubernetes client (which
    freezes $KUBECONFIG) in this process, which would break a later in-process operator in the same session.
    """
    import ast

    tree = ast.parse((ROOT / "operator" / "kubeforge" / "controllers" / "common.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "WARNING_REASONS" for t in node.targets):
            reasons = ast.literal_eval(node.value)
            assert isinstance(reasons, set) and "InvalidSpec" in reasons
            return {str(r) for r in reasons}
    raise AssertionError("WARNING_REASONS not found in kubeforge/controllers/common.py")


def test_modeldeployment_ignores_succeeded() -> None:
    """Serving is long-running: a stray Succeeded=True must not make it Healthy without Ready."""
    hs = run_health("ModelDeployment", make("ModelDeployment", [cond("Succeeded", "True"),
                                                               cond("Ready", "False", "Progressing")]))
    assert hs["status"] == "Progressing"


def test_every_kind_has_a_script_and_a_configmap_key() -> None:
    snippet = yaml.safe_load((ARGOCD / "argocd-cm-resource-customizations.yaml").read_text())
    assert snippet["metadata"]["name"] == "argocd-cm"
    for kind in KINDS:
        key = f"resource.customizations.health.kubeforge.io_{kind}"
        assert key in snippet["data"], f"argocd-cm snippet lacks {key}"
        # The snippet's script is the same program as the per-kind file: run it too.
        hs = run_health(kind, make(kind, [cond("Succeeded" if kind != "ModelDeployment" else "Ready", "True")]),
                        script=snippet["data"][key])
        assert hs["status"] == "Healthy"
    assert sorted(p.stem for p in (ARGOCD / "health").glob("*.lua")) == sorted(k.lower() for k in KINDS)


def test_generated_files_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ARGOCD / "render.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_render_kind_list_matches_api() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("argocd_render", ARGOCD / "render.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert list(KINDS) == mod.KINDS
