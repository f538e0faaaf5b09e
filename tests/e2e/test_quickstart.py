"""The quickstart through `kubeforge run`, for real: every stage trains/evaluates/converts on CPU and the
deployment is served by a real Triton server.

A reduced copy of examples/quickstart (fewer steps, a reachable threshold) runs in a temp dir:
1. the first run is interrupted with SIGINT while the pretraining stage trains, the second is SIGKILLed
   while the SFT stage trains, the third completes: each stage resumes from its checkpoints and nothing
   that already finished is redone;
2. a further run skips everything;
3. a failing threshold blocks the deployment with a reason naming the Evaluation and the threshold.

Needs the Triton install (`python -m kubeforge_serving install-triton`, cached under
~/.cache/kubeforge/triton). Run: `pytest tests/e2e/test_quickstart.py -m slow` (about 4-6 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge.runner.state import ResourceState, StateStore

pytestmark = [pytest.mark.slow, pytest.mark.ml, pytest.mark.triton]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
KUBEFORGE = [sys.executable, "-m", "kubeforge"]

# Reduced steps: long enough to interrupt mid-training, short enough for CI.
OVERRIDES: dict[str, dict[str, Any]] = {
    "base-lm": {"hyperparameters": {"maxSteps": 120, "evalSteps": 60}, "checkpointing": {"intervalSteps": 10}},
    "chat-sft": {"hyperparameters": {"maxSteps": 40, "evalSteps": 20}, "checkpointing": {"intervalSteps": 10}},
    "helpfulness-rm": {"hyperparameters": {"maxSteps": 20, "evalSteps": 10}, "checkpointing": {"intervalSteps": 10}},
    "chat-grpo": {"hyperparameters": {"maxSteps": 4}, "checkpointing": {"intervalSteps": 2}},
    # the reduced policy is too short-trained to be judged: any answer passes, so the deployment runs
    "chat-eval": {"thresholds": [{"metric": "contains", "min": 0.0}]},
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        base[k] = deep_merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return base


def reduced_quickstart(dest: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """Copy the quickstart (manifests + data) with spec overrides per object name."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(QUICKSTART / "data", dest / "data", dirs_exist_ok=True)
    for src in sorted(QUICKSTART.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(src.read_text()) if d]
        for d in docs:
            deep_merge(d["spec"], overrides.get(d["metadata"]["name"], {}))
        (dest / src.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return dest


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def kubeforge(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KUBEFORGE, *args], capture_output=True, text=True, timeout=timeout, env=env())


def run_until(manifests: Path, workdir: Path, ckpt_dir: Path, sig: signal.Signals, timeout: float = 600) -> int:
    """Start `kubeforge run`, wait for a complete checkpoint in `ckpt_dir`, send `sig`; the exit code."""
    proc = subprocess.Popen([*KUBEFORGE, "run", "-f", str(manifests), "--workdir", str(workdir), "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
    deadline = time.monotonic() + timeout
    try:
        while not list(ckpt_dir.glob("checkpoint-*/trainer_state.json")):
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"run ended ({proc.returncode}) before a checkpoint appeared in {ckpt_dir}:\n{out}")
            assert time.monotonic() < deadline, f"no checkpoint in {ckpt_dir} after {timeout}s"
            time.sleep(0.2)
        proc.send_signal(sig)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def triton_installed() -> None:
    from kubeforge_serving.triton import find_install

    if find_install() is None:
        pytest.fail("Triton is not installed: run `python -m kubeforge_serving install-triton` (needs the index once)")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, triton_installed: None) -> Iterator[dict[str, Any]]:
    """Interrupt (SIGINT), kill (SIGKILL), then complete the reduced quickstart."""
    base = tmp_path_factory.mktemp("quickstart")
    manifests = reduced_quickstart(base / "manifests", OVERRIDES)
    workdir = base / "wd"
    arts = workdir / "artifacts" / "default"
    t0 = time.monotonic()
    code1 = run_until(manifests, workdir, arts / "trainingjob/base-lm/g1/checkpoints", signal.SIGINT)
    code2 = run_until(manifests, workdir, arts / "trainingjob/chat-sft/g1/checkpoints", signal.SIGKILL)
    final = kubeforge("run", "-f", str(manifests), "--workdir", str(workdir))
    yield {"manifests": manifests, "workdir": workdir, "codes": (code1, code2), "final": final,
           "seconds": time.monotonic() - t0}


def states(workdir: Path) -> dict[str, ResourceState]:
    return {f"{s.kind}/{s.name}": s for s in StateStore(workdir).all()}


def test_every_object_succeeds_after_interruptions(pipeline: dict[str, Any]) -> None:
    assert pipeline["codes"] == (130, -signal.SIGKILL)
    final = pipeline["final"]
    assert final.returncode == 0, final.stderr[-4000:]
    got = states(pipeline["workdir"])
    assert len(got) == 10
    for ref, s in got.items():
        if s.kind == "ModelDeployment":
            assert s.is_true("Ready"), (ref, s.status.get("conditions"))
        else:
            assert s.is_true("Succeeded"), (ref, s.status.get("conditions"))
    assert got["Evaluation/chat-eval"].is_true("Passed")
    lineage = {e["name"] for e in got["RLHFJob/chat-grpo"].status["lineage"]}
    assert {"chat-sft", "helpfulness-rm", "questions"} <= lineage
    print(f"reduced quickstart with two interruptions: {pipeline['seconds']:.0f}s")


def test_interrupted_stages_resumed_and_finished_ones_not_redone(pipeline: dict[str, Any]) -> None:
    got = states(pipeline["workdir"])
    for ds in ("Dataset/corpus", "Dataset/instructions", "Dataset/questions", "Dataset/preferences"):
        assert len(got[ds].events_with("Started")) == 1, ds  # never redone across the three runs
    store = StateStore(pipeline["workdir"])
    for ref in ("TrainingJob/base-lm", "TrainingJob/chat-sft"):
        s = got[ref]
        assert len(s.events_with("Started")) == 2, (ref, [e.reason for e in s.events])
        assert s.events_with("Interrupted"), ref
        resuming = s.events_with("Resuming")
        assert resuming, ref
        ckpt_step = int(resuming[-1].message.rsplit("-", 1)[1])
        assert ckpt_step >= 10
        # progress sampled after the resume starts at the checkpoint, not at step 0
        samples = [json.loads(line) for line in store.history_path(s.key).read_text().splitlines()]
        after = [x["step"] for x in samples if x["time"] > epoch(resuming[-1].time) and x.get("step")]
        assert after and min(after) >= ckpt_step, (ref, after[:5], ckpt_step)
        assert s.status["progress"]["step"] == s.status["progress"]["totalSteps"]
    # base-lm finished in run 2: run 3 did not start it again
    assert got["TrainingJob/base-lm"].events_with("UpToDate")


def test_deployment_served_and_answered(pipeline: dict[str, Any]) -> None:
    md = states(pipeline["workdir"])["ModelDeployment/chat"]
    ready = md.condition("Ready")
    assert ready is not None and ready.reason == "Verified"
    smoke = md.status["smoke"]
    manifest = yaml.safe_load((QUICKSTART / "07-deployment.yaml").read_text())
    assert smoke["prompt"] == manifest["metadata"]["annotations"]["kubeforge.io/smoke-prompt"]
    assert isinstance(smoke["answer"], str) and smoke["answer"].strip()
    assert smoke["requestMs"] > 0
    served = [e for e in md.events_with("Serving")]
    assert served and "127.0.0.1:" in served[-1].message
    assert "Triton at http://127.0.0.1:" in pipeline["final"].stderr
    assert md.status["conversion"]["sizeBytes"] < md.status["conversion"]["fp32SizeBytes"]
    report = pipeline["workdir"] / "report.html"
    assert report.exists() and report.read_text().count("data:image/png;base64,") >= 5


def test_second_run_skips_everything(pipeline: dict[str, Any]) -> None:
    before = {r: len(s.events_with("Started")) for r, s in states(pipeline["workdir"]).items()}
    t0 = time.monotonic()
    res = kubeforge("run", "-f", str(pipeline["manifests"]), "--workdir", str(pipeline["workdir"]), "--no-report")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("up to date") == 10
    after = {r: len(s.events_with("Started")) for r, s in states(pipeline["workdir"]).items()}
    assert after == before
    assert time.monotonic() - t0 < 30
    table = kubeforge("get", "--workdir", str(pipeline["workdir"]))
    assert table.returncode == 0
    for ref in before:
        assert ref in table.stdout


def test_failing_threshold_blocks_deployment(pipeline: dict[str, Any], tmp_path: Path) -> None:
    strict = {**OVERRIDES, "chat-eval": {"thresholds": [{"metric": "contains", "min": 0.99}]}}
    manifests = reduced_quickstart(tmp_path / "strict", strict)
    res = kubeforge("run", "-f", str(manifests), "--workdir", str(pipeline["workdir"]), "--no-report")
    assert res.returncode == 1, res.stderr[-3000:]
    got = states(pipeline["workdir"])
    ev = got["Evaluation/chat-eval"]
    assert ev.is_true("Succeeded") and not ev.is_true("Passed")
    ready = got["ModelDeployment/chat"].condition("Ready")
    assert ready is not None and ready.status.value == "False" and ready.reason == "GateFailed"
    assert "Evaluation/chat-eval did not pass" in ready.message and "contains" in ready.message
    assert "GateFailed" in res.stderr
    desc = kubeforge("describe", "ModelDeployment/chat", "--workdir", str(pipeline["workdir"]))
    assert "GateFailed" in desc.stdout
    # upstream training was not redone for an evaluation change
    assert got["TrainingJob/base-lm"].events_with("UpToDate")[-1].time > ev.events_with("Started")[0].time
