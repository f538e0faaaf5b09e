"""Argo CD health checks, run in Argo CD's own Lua sandbox.

hack/argocd-lua is a small Go program on gopher-lua (the VM Argo CD embeds) that opens libraries exactly
as Argo CD's util/lua/lua.go does for an argocd-cm script: SkipOpenLibs, then package, base, table and a
reduced os; no `string` library, no string methods. A script error there is health Unknown in Argo CD,
and an error here. Every case below runs the script shipped in argocd/argocd-cm-resource-customizations.yaml
(the key of the object's kind), all cases in one harness process.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kubeforge.api.v1alpha1 import KINDS

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "argocd"
HARNESS_BUILD = ROOT / "hack" / "argocd-lua" / "build.sh"
BOUNDED = ["Dataset", "TrainingJob", "RewardModel", "RLHFJob", "Evaluation"]
# False-condition reasons the operator writes on Ready/DependenciesReady that mean "work in progress".
PROGRESSING_REASONS = {"WaitingForDependencies", "Progressing", "Converting"}


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("argocd_render", ARGOCD / "render.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render = _load_render()
SNIPPET = yaml.safe_load((ARGOCD / "argocd-cm-resource-customizations.yaml").read_text())


def shipped_script(kind: str) -> str:
    return str(SNIPPET["data"][f"resource.customizations.health.kubeforge.io_{kind}"])


# ---------------------------------------------------------------- the harness


@pytest.fixture(scope="session")
def harness() -> Path:
    """hack/argocd-lua, built once and cached by source hash (a warm run only hashes three files)."""
    if shutil.which("go") is None:
        msg = "Go is needed to build hack/argocd-lua (Argo CD's Lua sandbox)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    proc = subprocess.run(["bash", str(HARNESS_BUILD)], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"hack/argocd-lua/build.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    return Path(proc.stdout.strip().splitlines()[-1])


def run_lua(binary: Path, cases: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Run [{"script"|"file", "obj", "openLibs"?}] in one harness process; one {status, message[, error]} each."""
    proc = subprocess.run([str(binary)], input=json.dumps(cases), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    out: list[dict[str, str]] = json.loads(proc.stdout)
    assert len(out) == len(cases)
    return out


# ---------------------------------------------------------------- cases


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


@dataclass(frozen=True)
class Case:
    id: str
    obj: dict[str, Any]
    expected: str
    text: str = ""  # a substring of the message


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
    ("failed-stage-reason", [cond("Succeeded", "False", "StageCrashed", "exit code 137 without a result")],
     3, 3, "Degraded", "StageCrashed: exit code 137"),
    ("failed-no-reason", [{"type": "Succeeded", "status": "False", "observedGeneration": 3}],
     3, 3, "Degraded", "Succeeded is False"),
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

EVAL_CASES: list[tuple[str, list[dict[str, Any]], str, str]] = [
    ("passed", [cond("Succeeded", "True", "JobSucceeded"), cond("Passed", "True", "ThresholdsMet", "accuracy 0.91")],
     "Healthy", "JobSucceeded"),
    ("thresholds-failed", [cond("Succeeded", "True", "JobSucceeded"),
                           cond("Passed", "False", "ThresholdsFailed", "accuracy 0.41 < 0.8")],
     "Degraded", "accuracy 0.41 < 0.8"),
    # The gate treats a Passed that is not True as failed, so a missing verdict must not read Healthy.
    ("no-result", [cond("Succeeded", "True", "Completed"),
                   cond("Passed", "Unknown", "NoResult", "the evaluate stage left no result")],
     "Degraded", "NoResult"),
    ("job-failed", [cond("Succeeded", "False", "BackoffLimitExceeded", "OOMKilled"),
                    cond("Passed", "False", "EvaluationFailed", "the evaluation did not complete")],
     "Degraded", "OOMKilled"),
    ("no-thresholds", [cond("Succeeded", "True", "JobSucceeded", "report written")], "Healthy", "report written"),
    ("running-passed-unknown", [cond("Succeeded", "Unknown", "Running"), cond("Passed", "Unknown")],
     "Progressing", "Running"),
]

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
    ("converting-ready-false", [cond("DependenciesReady", "True"),
                                cond("Ready", "False", "Converting", "waiting for the conversion Job")],
     3, 3, "Progressing", "conversion Job"),
    ("unknown-reason", [cond("Ready", "False", "SomethingNew", "x")], 3, 3, "Progressing", "SomethingNew"),
    ("no-reason", [{"type": "Ready", "status": "False", "observedGeneration": 3}], 3, 3, "Progressing",
     "Ready is False"),
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
    # Serving is long-running: a stray Succeeded=True must not make it Healthy without Ready.
    ("ignores-succeeded", [cond("Succeeded", "True"), cond("Ready", "False", "Progressing")],
     3, 3, "Progressing", "Progressing"),
]


def operator_false_reasons() -> set[str]:
    """Literal reasons the controllers write with status "False" on Ready or DependenciesReady (from source).

    `writer.set(main, ...)` in the shared dependency code counts too (main is Ready for ModelDeployment).
    """
    found: set[str] = set()
    for path in sorted((ROOT / "operator" / "kubeforge" / "controllers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "set"
                    and len(node.args) >= 3):
                continue
            ctype, status, reason = node.args[:3]
            name = ctype.attr if isinstance(ctype, ast.Attribute) else getattr(ctype, "id", "")
            if (name in {"READY", "DEPENDENCIES_READY", "main"} and isinstance(status, ast.Constant)
                    and status.value == "False" and isinstance(reason, ast.Constant)):
                found.add(str(reason.value))
    assert len(found) >= 5, f"scan of the controllers found too few reasons: {found}"
    return found


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for kind in BOUNDED:
        for cid, conds, gen, observed, expected, text in BOUNDED_CASES:
            cases.append(Case(f"{kind}/{cid}", make(kind, conds, gen, observed), expected, text))
    for cid, conds, expected, text in EVAL_CASES:
        cases.append(Case(f"Evaluation/{cid}", make("Evaluation", conds), expected, text))
    # Other kinds never carry Passed; if one did, Succeeded alone decides.
    cases.append(Case("TrainingJob/passed-false-ignored", make("TrainingJob", [
        cond("Succeeded", "True", "JobSucceeded"), cond("Passed", "False", "ThresholdsFailed")]), "Healthy"))
    for cid, conds, gen, observed, expected, text in MD_CASES:
        cases.append(Case(f"ModelDeployment/{cid}", make("ModelDeployment", conds, gen, observed), expected, text))
    # The operator's own failure reasons (Warning events) must all read Degraded in Argo CD.
    for reason in render.failure_reasons():
        cases.append(Case(f"ModelDeployment/warning-{reason}",
                          make("ModelDeployment", [cond("Ready", "False", reason, "x")]), "Degraded", reason))
        if reason != "ThresholdsFailed":  # a Passed reason, never on DependenciesReady
            deps = [cond("DependenciesReady", "False", reason, "x"), cond("Succeeded", "Unknown", "Pending")]
            cases.append(Case(f"TrainingJob/deps-warning-{reason}", make("TrainingJob", deps), "Degraded", reason))
    # Every reason the controllers write on Ready/DependenciesReady=False, as ModelDeployment Ready.
    for reason in sorted(operator_false_reasons()):
        expected = ("Suspended" if reason in render.SUSPEND_REASONS else
                    "Degraded" if reason in render.failure_reasons() else "Progressing")
        cases.append(Case(f"ModelDeployment/operator-{reason}",
                          make("ModelDeployment", [cond("Ready", "False", reason, "m")]), expected, reason))
    # Each kind's key in the snippet: a finished object is Healthy.
    for kind in KINDS:
        main = "Ready" if kind == "ModelDeployment" else "Succeeded"
        cases.append(Case(f"{kind}/snippet-key", make(kind, [cond(main, "True", "Done")]), "Healthy", "Done"))
    return cases


CASES = build_cases()


@pytest.fixture(scope="module")
def results(harness: Path) -> dict[str, dict[str, str]]:
    """Every case through the shipped script of its kind, in one harness process."""
    out = run_lua(harness, [{"script": shipped_script(c.obj["kind"]), "obj": c.obj} for c in CASES])
    return {c.id: r for c, r in zip(CASES, out, strict=True)}


def test_case_ids_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_health_in_argocd_sandbox(case: Case, results: dict[str, dict[str, str]]) -> None:
    hs = results[case.id]
    assert "error" not in hs, f"{case.id}: the script fails in Argo CD's sandbox (health Unknown): {hs['error']}"
    assert hs["status"] == case.expected, f"{case.id}: {hs}"
    assert case.text in hs["message"], f"{case.id}: message {hs['message']!r} lacks {case.text!r}"


def test_source_file_runs_in_sandbox(harness: Path) -> None:
    """argocd/health.lua itself (not only its embedded copy) runs in the sandbox, from a file."""
    obj = make("Evaluation", [cond("Succeeded", "True"), cond("Passed", "False", "ThresholdsFailed", "acc")])
    [hs] = run_lua(harness, [{"file": str(ARGOCD / "health.lua"), "obj": obj}])
    assert hs == {"status": "Degraded", "message": "ThresholdsFailed: acc"}


# ---------------------------------------------------------------- the sandbox is real


def test_sandbox_has_no_string_library(harness: Path) -> None:
    """What broke the old scripts: string.find and string methods fail under Argo CD's defaults, work with
    useOpenLibs. Proves the harness reproduces the sandbox rather than passing everything."""
    find = 'local i = string.find("GateFailed", "Fail", 1, true); return {status = "Healthy", message = tostring(i)}'
    method = 'local s = "GateFailed"; return {status = "Healthy", message = s:lower()}'
    base = ('local t = {}; table.insert(t, "a"); local os = require("os")\n'
            'return {status = "Healthy", message = tostring(#t) .. tostring(tonumber("3")) .. tostring(os.time() > 0)}')
    obj = make("Dataset", None)
    out = run_lua(harness, [
        {"script": find, "obj": obj},
        {"script": method, "obj": obj},
        {"script": find, "obj": obj, "openLibs": True},
        {"script": method, "obj": obj, "openLibs": True},
        {"script": base, "obj": obj},
        {"script": "return {status = 'Fine'}", "obj": obj},
        {"script": "return 'Healthy'", "obj": obj},
    ])
    assert out[0]["status"] == "Unknown" and "'find'" in out[0]["error"], out[0]
    assert out[1]["status"] == "Unknown" and "'lower'" in out[1]["error"], out[1]
    assert out[2] == {"status": "Healthy", "message": "5"}
    assert out[3] == {"status": "Healthy", "message": "gatefailed"}
    assert out[4] == {"status": "Healthy", "message": "13true"}  # what Argo CD does open
    assert out[5] == {"status": "Unknown", "message": "Lua returned an invalid health status"}
    assert "error" in out[6] and "expect table output" in out[6]["error"]


def test_shipped_script_names_no_string_library() -> None:
    """A static guard for paths no case reaches: no `string.` and no method-call syntax outside comments."""
    code = re.sub(r"--[^\n]*", "", (ARGOCD / "health.lua").read_text())
    code = re.sub(r'"[^"\n]*"', '""', code)
    assert not re.search(r"\bstring\b", code)
    assert ":" not in code, "method calls (s:lower()) need the string metatable, absent in Argo CD"


# ---------------------------------------------------------------- generated files


def test_generated_files_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ARGOCD / "render.py"), "--check"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_snippet_shape() -> None:
    assert SNIPPET["apiVersion"] == "v1" and SNIPPET["kind"] == "ConfigMap"
    assert SNIPPET["metadata"]["name"] == "argocd-cm"
    assert sorted(SNIPPET["data"]) == sorted(f"resource.customizations.health.kubeforge.io_{k}" for k in KINDS)
    assert not (ARGOCD / "health").exists(), "per-kind copies are gone: argocd-cm only needs the snippet"


def test_helm_values_carry_the_same_keys() -> None:
    proc = subprocess.run([sys.executable, str(ARGOCD / "render.py"), "--helm-values"], capture_output=True,
                          text=True, check=True)
    values = yaml.safe_load(proc.stdout)
    assert values["configs"]["cm"] == SNIPPET["data"]


def test_tables_come_from_the_operator() -> None:
    """FAILURE_REASONS is the operator's WARNING_REASONS; every reason the operator writes on Ready /
    DependenciesReady=False is classified (a new one must be placed in a table or declared progressing)."""
    from kubeforge.api.v1alpha1 import conditions

    consts = render.operator_constants()
    assert render.failure_reasons() == sorted(consts["WARNING_REASONS"]) == sorted(conditions.WARNING_REASONS)
    for lua_name, const in render.CONDITION_TYPES.items():
        assert consts[const] == getattr(conditions, const), lua_name
    block = render.generated_block()
    for reason in render.failure_reasons():
        assert f" {reason} = true," in block
    unclassified = operator_false_reasons() - set(render.failure_reasons()) - set(render.SUSPEND_REASONS) \
        - PROGRESSING_REASONS
    assert not unclassified, f"reasons the health check does not know: {sorted(unclassified)}"


def test_render_kind_list_matches_api() -> None:
    assert list(KINDS) == render.KINDS
