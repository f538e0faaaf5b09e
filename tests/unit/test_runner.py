"""`kubeforge run` without ML: manifest rejection, ordering, digest skipping, gate, resume, CLI views.

Stages are replaced by a small fake stage script (same argv shape and files as the real ones: it reads
the StageConfig, writes progress.json, checkpoints, result.json) so scheduling logic is tested in
seconds; tests/e2e/test_quickstart.py runs the real stages.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge import kinds
from kubeforge.builders.workloads import stage_file
from kubeforge.cli import app
from kubeforge.manifests import ManifestError
from kubeforge.runner.executor import Runner, RunOptions
from kubeforge.runner.graph import load_pipeline, localize, parse_ref
from kubeforge.runner.report import get_table, write_html
from kubeforge.runner.state import StateStore, pid_alive
from kubeforge.stage import StageConfig, StageResult, local_path
from rich.console import Console
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"

FAKE_STAGE = textwrap.dedent(
    '''
    """Fake stage: same files as a real one. Labels steer it: fake/fail, fake/steps, fake/sleep, fake/passed."""
    import hashlib, json, os, sys, time
    from pathlib import Path
    from kubeforge.stage import StageConfig, local_path

    stage, cfg = sys.argv[1], sys.argv[3]
    config = StageConfig.load(cfg)
    labels = config.resource["metadata"].get("labels") or {}
    out = local_path(config.output_uri)
    out.mkdir(parents=True, exist_ok=True)
    steps = int(labels.get("fake/steps", "2"))
    pause = float(labels.get("fake/sleep", "0"))
    start = 0
    if config.checkpoint_uri:
        ck = local_path(config.checkpoint_uri)
        done = sorted(int(p.name.split("-")[1]) for p in ck.glob("checkpoint-*")) if ck.exists() else []
        if done:
            start = done[-1]
            print(f"resumed from checkpoint-{start}", flush=True)
    if start == 0:
        print("fresh start", flush=True)
    for step in range(start + 1, steps + 1):
        time.sleep(pause)
        print(f"step {step}", flush=True)
        local_path(config.progress_path).write_text(json.dumps(
            {"step": step, "totalSteps": steps, "loss": 1.0 / step, "percent": f"{100 * step // steps}%"}))
        if config.checkpoint_uri:
            (local_path(config.checkpoint_uri) / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
    if labels.get("fake/fail") == "true":
        result = {"succeeded": False, "reason": "InvalidInput", "message": "fake failure"}
    else:
        body = json.dumps({"name": config.resource["metadata"]["name"], "spec": config.resource["spec"],
                           "inputs": {k: v.digest for k, v in config.inputs.items()}}, sort_keys=True)
        (out / "artifact.txt").write_text(body)
        digest = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
        result = {"succeeded": True, "message": "done", "artifact": {"uri": config.output_uri, "digest": digest},
                  "metrics": {"train_loss": 0.5}, "lineage": [v.lineage().to_wire() for v in config.inputs.values()]}
        kind = config.resource["kind"]
        if kind == "Dataset":
            result["details"] = {"counts": {"input": 10, "train": 8, "validation": 1, "test": 1},
                                 "removed": {"dedup_exact": 2}, "digest": digest}
        if kind == "Evaluation":
            passed = labels.get("fake/passed", "true") == "true"
            result["metrics"] = {"rougeL": 0.42 if passed else 0.1}
            result["details"] = {"passed": passed, "sampleCount": 5,
                                 "failedThresholds": [] if passed else ["rougeL 0.1 < min 0.3"]}
        if kind == "ModelDeployment":
            result["details"] = {"modelRepository": config.output_uri + "/repository",
                                 "conversion": {"fp32_size_bytes": 1000.0, "int8_size_bytes": 300.0}}
    Path(local_path(config.result_path)).write_text(json.dumps(result))
    sys.exit(0 if result["succeeded"] else 1)
    '''
)


def meta(name: str, **labels: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if labels:
        out["labels"] = labels
    return out


def pipeline_docs(eval_labels: dict[str, str] | None = None, train_labels: dict[str, str] | None = None,
                  lr: float = 0.001) -> list[dict[str, Any]]:
    """A full six-kind pipeline (the quickstart's shape)."""
    api = "kubeforge.io/v1alpha1"
    return [
        {"apiVersion": api, "kind": "Dataset", "metadata": meta("text"),
         "spec": {"task": "text", "source": {"uris": ["data/text.jsonl"]}}},
        {"apiVersion": api, "kind": "Dataset", "metadata": meta("prefs"),
         "spec": {"task": "preference", "source": {"uris": ["file://./data/prefs.jsonl"]}}},
        {"apiVersion": api, "kind": "TrainingJob", "metadata": meta("base", **(train_labels or {})),
         "spec": {"method": "pretrain", "model": {"architecture": {"hiddenSize": 32}}, "dataset": {"name": "text"},
                  "hyperparameters": {"learningRate": lr}}},
        {"apiVersion": api, "kind": "RewardModel", "metadata": meta("rm"),
         "spec": {"model": {"ref": {"kind": "TrainingJob", "name": "base"}}, "dataset": {"name": "prefs"}}},
        {"apiVersion": api, "kind": "RLHFJob", "metadata": meta("rl"),
         "spec": {"algorithm": "grpo", "policy": {"ref": {"kind": "TrainingJob", "name": "base"}},
                  "reward": {"model": {"name": "rm"}}, "dataset": {"name": "prefs"}}},
        {"apiVersion": api, "kind": "Evaluation", "metadata": meta("ev", **(eval_labels or {})),
         "spec": {"model": {"ref": {"kind": "RLHFJob", "name": "rl"}}, "dataset": {"name": "qa", "split": "test"},
                  "taskType": "generation", "metrics": ["rougeL"], "thresholds": [{"metric": "rougeL", "min": 0.3}]}},
        {"apiVersion": api, "kind": "ModelDeployment", "metadata": meta("serve"),
         "spec": {"model": {"ref": {"kind": "RLHFJob", "name": "rl"}}, "gate": {"evaluations": ["ev"]},
                  "quantization": {"mode": "int8-dynamic"}}},
        # Last, so the indices above stay put: generation needs prompt/response records.
        {"apiVersion": api, "kind": "Dataset", "metadata": meta("qa"),
         "spec": {"task": "instruction", "source": {"uris": ["data/qa.jsonl"]}}},
    ]


def write_manifests(dir_: Path, docs: list[dict[str, Any]], name: str = "pipeline.yaml") -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    data = dir_ / "data"
    data.mkdir(exist_ok=True)
    (data / "text.jsonl").write_text('{"text": "hello"}\n')
    (data / "qa.jsonl").write_text('{"instruction": "a", "response": "b"}\n')
    (data / "prefs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    path = dir_ / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@pytest.fixture
def fake_stage(tmp_path: Path) -> Path:
    path = tmp_path / "fake_stage.py"
    path.write_text(FAKE_STAGE)
    return path


def make_runner(manifests: Path, workdir: Path, fake_stage: Path, **opts: Any) -> tuple[Runner, io.StringIO]:
    out = io.StringIO()
    runner = Runner(load_pipeline([manifests]), StateStore(workdir), RunOptions(smoke=False, **opts),
                    Console(file=out, width=200))
    runner.command = lambda config, path: [sys.executable, str(fake_stage), config.stage, "--config", path]
    return runner, out


# ---- rejection before anything runs -------------------------------------------------------------


def _problems(path: Path) -> str:
    with pytest.raises(ManifestError) as exc:
        load_pipeline([path])
    return "\n".join(exc.value.problems)


def test_unknown_reference_names_file_and_field(tmp_path: Path) -> None:
    docs = pipeline_docs()
    docs[3]["spec"]["dataset"]["name"] = "prefz"
    path = write_manifests(tmp_path, docs)
    msg = _problems(path)
    assert f"{path}#3 (RewardModel/rm): spec.dataset.name: unknown reference Dataset/prefz" in msg


def test_unknown_rlhf_policy_and_gate_fields(tmp_path: Path) -> None:
    docs = pipeline_docs()
    docs[4]["spec"]["policy"]["ref"]["name"] = "nope"
    docs[6]["spec"]["gate"]["evaluations"] = ["ev", "missing-eval"]
    msg = _problems(write_manifests(tmp_path, docs))
    assert "(RLHFJob/rl): spec.policy.ref.name: unknown reference TrainingJob/nope" in msg
    assert "(ModelDeployment/serve): spec.gate.evaluations[1]: unknown reference Evaluation/missing-eval" in msg


def test_wrong_kind_reference_hints(tmp_path: Path) -> None:
    docs = pipeline_docs()
    docs[3]["spec"]["model"]["ref"] = {"kind": "RLHFJob", "name": "base"}
    msg = _problems(write_manifests(tmp_path, docs))
    assert "spec.model.ref.name: unknown reference RLHFJob/base" in msg
    assert "found TrainingJob/base: wrong kind?" in msg


def test_cycle_is_rejected_with_path(tmp_path: Path) -> None:
    api = "kubeforge.io/v1alpha1"
    docs = [
        {"apiVersion": api, "kind": "Dataset", "metadata": meta("text"),
         "spec": {"task": "text", "source": {"uris": ["data/text.jsonl"]}}},
        {"apiVersion": api, "kind": "TrainingJob", "metadata": meta("a"),
         "spec": {"method": "sft", "model": {"ref": {"kind": "TrainingJob", "name": "b"}},
                  "dataset": {"name": "text"}}},
        {"apiVersion": api, "kind": "TrainingJob", "metadata": meta("b"),
         "spec": {"method": "sft", "model": {"ref": {"kind": "TrainingJob", "name": "a"}},
                  "dataset": {"name": "text"}}},
    ]
    msg = _problems(write_manifests(tmp_path, docs))
    assert "dependency cycle" in msg
    assert "TrainingJob/a -> TrainingJob/b -> TrainingJob/a" in msg or "TrainingJob/b -> TrainingJob/a -> " \
        "TrainingJob/b" in msg
    assert "spec.model.ref.name" in msg


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    docs = pipeline_docs()
    write_manifests(tmp_path, docs)
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(docs[2]))
    with pytest.raises(ManifestError) as exc:
        load_pipeline([tmp_path])
    msg = "\n".join(exc.value.problems)
    assert "metadata.name: duplicate TrainingJob/base" in msg
    assert str(tmp_path / "more.yaml") in msg or str(tmp_path / "pipeline.yaml") in msg


def test_same_name_different_kind_is_fine(tmp_path: Path) -> None:
    docs = pipeline_docs()
    docs[0]["metadata"]["name"] = "base"
    docs[2]["spec"]["dataset"]["name"] = "base"
    assert len(load_pipeline([write_manifests(tmp_path, docs)]).order) == 8


def test_invalid_spec_names_field(tmp_path: Path) -> None:
    docs = pipeline_docs()
    docs[2]["spec"]["hyperparameters"]["learningRate"] = -1
    docs[5]["spec"]["metrics"] = ["mse"]
    msg = _problems(write_manifests(tmp_path, docs))
    assert "(TrainingJob/base): spec.hyperparameters.learningRate: Input should be greater than 0" in msg
    assert "(Evaluation/ev): spec" in msg and "mse" in msg


def test_cli_rejects_before_running(tmp_path: Path) -> None:
    docs = pipeline_docs()
    docs[3]["spec"]["dataset"]["name"] = "prefz"
    path = write_manifests(tmp_path / "m", docs)
    workdir = tmp_path / "wd"
    result = CliRunner().invoke(app, ["run", "-f", str(path), "--workdir", str(workdir)])
    assert result.exit_code == 2
    assert "spec.dataset.name: unknown reference Dataset/prefz" in result.output
    assert "nothing was run" in result.output
    assert not workdir.exists()


# ---- graph -------------------------------------------------------------------------------------


def test_order_follows_references(tmp_path: Path) -> None:
    docs = list(reversed(pipeline_docs()))  # declaration order must not matter
    p = load_pipeline([write_manifests(tmp_path, docs)])
    order = [f"{k[0]}/{k[2]}" for k in p.order]
    pos = {r: i for i, r in enumerate(order)}
    for before, after in [("Dataset/text", "TrainingJob/base"), ("Dataset/prefs", "RewardModel/rm"),
                          ("TrainingJob/base", "RewardModel/rm"), ("RewardModel/rm", "RLHFJob/rl"),
                          ("RLHFJob/rl", "Evaluation/ev"), ("Evaluation/ev", "ModelDeployment/serve")]:
        assert pos[before] < pos[after], order
    assert [f"{k[0]}/{k[2]}" for k in p.downstream(p.find("rewardmodel/rm").key)] == [
        "RewardModel/rm", "RLHFJob/rl", "Evaluation/ev", "ModelDeployment/serve"]


def test_quickstart_graph_loads() -> None:
    p = load_pipeline([QUICKSTART])
    kinds = [k[0] for k in p.order]
    assert kinds.count("Dataset") == 4 and kinds[-1] == "ModelDeployment"
    corpus = p.find("Dataset/corpus").resource
    uri = corpus.spec.source.uris[0]  # type: ignore[attr-defined]
    assert uri == f"file://{QUICKSTART / 'data' / 'corpus.jsonl'}"
    assert local_path(uri).exists()


def test_localize_relative_paths(tmp_path: Path) -> None:
    body = {"spec": {"source": {"uris": ["data/a.jsonl", "file://./b.jsonl", "file:///abs/c", "s3://x/y",
                                         "hf://org/ds"]},
                     "model": {"uri": "org/name"}, "tokenizer": {"uri": "file://../tok"}}}
    out = localize(body, tmp_path / "m")
    assert out["spec"]["source"]["uris"] == [
        f"file://{tmp_path / 'm' / 'data' / 'a.jsonl'}", f"file://{tmp_path / 'm' / 'b.jsonl'}", "file:///abs/c",
        "s3://x/y", "hf://org/ds"]
    assert out["spec"]["model"]["uri"] == "org/name"  # a hub id, not a path
    assert out["spec"]["tokenizer"]["uri"] == f"file://{tmp_path / 'tok'}"


def test_parse_ref_accepts_short_names() -> None:
    assert parse_ref("kftj/base") == ("TrainingJob", "", "base")
    assert parse_ref("trainingjobs/ns1/base") == ("TrainingJob", "ns1", "base")
    with pytest.raises(KeyError, match="unknown kind"):
        parse_ref("Pod/x")


# ---- running with a fake stage -----------------------------------------------------------------


def _started(store: StateStore, ref: str) -> int:
    return len(store.find(ref).events_with("Started"))


def test_run_then_skip_everything(tmp_path: Path, fake_stage: Path) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs())
    workdir = tmp_path / "wd"
    runner, out = make_runner(manifests, workdir, fake_stage)
    assert runner.run() == 0, out.getvalue()
    store = StateStore(workdir)
    states = {f"{s.kind}/{s.name}": s for s in store.all()}
    assert len(states) == 8
    tj = states["TrainingJob/base"]
    assert tj.is_true("Succeeded") and tj.is_true("DependenciesReady")
    assert tj.status["artifact"]["digest"].startswith("sha256:")
    assert tj.status["lineage"][0]["kind"] == "Dataset"
    assert states["Dataset/text"].status["counts"]["train"] == 8
    assert states["Evaluation/ev"].is_true("Passed")
    md = states["ModelDeployment/serve"]
    assert md.is_true("Ready") and md.condition("Ready").reason == "Converted"  # type: ignore[union-attr]
    # The served repository's digest (as on the cluster); the model it came from is in the lineage.
    assert md.status["modelDigest"].startswith("sha256:") and md.status["modelDigest"] != (
        states["RLHFJob/rl"].status["artifact"]["digest"])
    assert states["RLHFJob/rl"].status["artifact"]["digest"] in [e["digest"] for e in md.status["lineage"]]
    cfg = StageConfig.load(store.config_path(tj.key))
    assert cfg.inputs["dataset"].digest == states["Dataset/text"].status["digest"]
    assert cfg.output_uri == f"file://{workdir.resolve()}/artifacts/default/trainingjob/base/g1"  # a folder per run
    assert "step 2" in store.log_path(tj.key).read_text()
    # every status validates against the API's status model (same model as the cluster)
    for s in states.values():
        for c in s.status["conditions"]:
            assert c["observedGeneration"] == s.generation and c["lastTransitionTime"]

    runner2, out2 = make_runner(manifests, workdir, fake_stage)
    assert runner2.run() == 0
    assert set(runner2.outcomes.values()) == {"UpToDate"}, out2.getvalue()
    assert all(_started(store, r) == 1 for r in states)


def test_changed_spec_reruns_it_and_downstream(tmp_path: Path, fake_stage: Path) -> None:
    workdir = tmp_path / "wd"
    runner, _ = make_runner(write_manifests(tmp_path / "m", pipeline_docs()), workdir, fake_stage)
    assert runner.run() == 0
    runner2, _ = make_runner(write_manifests(tmp_path / "m", pipeline_docs(lr=0.002)), workdir, fake_stage)
    assert runner2.run() == 0
    got = {f"{k[0]}/{k[2]}": v for k, v in runner2.outcomes.items()}
    assert got["Dataset/text"] == "UpToDate" and got["Dataset/prefs"] == "UpToDate"
    for ref in ("TrainingJob/base", "RewardModel/rm", "RLHFJob/rl", "Evaluation/ev", "ModelDeployment/serve"):
        assert got[ref] == "Succeeded", ref
    store = StateStore(workdir)
    assert store.find("TrainingJob/base").generation == 2


def test_changed_data_file_reruns_dataset(tmp_path: Path, fake_stage: Path) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs())
    workdir = tmp_path / "wd"
    assert make_runner(manifests, workdir, fake_stage)[0].run() == 0
    (tmp_path / "m" / "data" / "prefs.jsonl").write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n')
    runner, _ = make_runner(manifests, workdir, fake_stage)
    assert runner.run() == 0
    got = {f"{k[0]}/{k[2]}": v for k, v in runner.outcomes.items()}
    assert got["Dataset/prefs"] == "Succeeded" and got["Dataset/text"] == "UpToDate"
    assert got["TrainingJob/base"] == "UpToDate"


def test_moved_input_reruns_into_a_new_folder_unless_the_object_keeps_its_result(
    tmp_path: Path, fake_stage: Path
) -> None:
    """A new run writes its own folder (dependents' lineage stays true); rerunOnInputChange: false keeps a result."""
    docs = pipeline_docs()
    docs[3]["spec"]["rerunOnInputChange"] = False  # RewardModel/rm keeps what it made
    manifests = write_manifests(tmp_path / "m", docs)
    workdir = tmp_path / "wd"
    assert make_runner(manifests, workdir, fake_stage)[0].run() == 0
    store = StateStore(workdir)
    rm_before = store.find("RewardModel/rm").status
    rl_first = local_path(store.find("RLHFJob/rl").status["artifact"]["uri"])
    (tmp_path / "m" / "data" / "prefs.jsonl").write_text('{"prompt": "q", "chosen": "y", "rejected": "n"}\n')
    runner, _ = make_runner(manifests, workdir, fake_stage)
    assert runner.run() == 0
    got = {f"{k[0]}/{k[2]}": v for k, v in runner.outcomes.items()}
    assert got["Dataset/prefs"] == "Succeeded" and got["RLHFJob/rl"] == "Succeeded"
    assert got["RewardModel/rm"] == "UpToDate"
    store = StateStore(workdir)
    rm = store.find("RewardModel/rm")
    cond = rm.condition("DependenciesReady")
    assert cond is not None and cond.reason == "InputsChanged" and "rerunOnInputChange: false" in cond.message
    assert rm.status["lineage"] == rm_before["lineage"] and rm.status["artifact"] == rm_before["artifact"]
    rl = store.find("RLHFJob/rl")
    rl_second = local_path(rl.status["artifact"]["uri"])
    assert (rl.generation, rl_first.name, rl_second.name) == (2, "g1", "g2")
    assert (rl_first / "result.json").is_file() and (rl_second / "result.json").is_file()  # g1 not overwritten
    prefs = store.find("Dataset/prefs")
    assert {e["digest"] for e in rl.status["lineage"] if e["name"] == "prefs"} == {prefs.status["digest"]}


def test_workdir_inside_the_manifests_directory_is_not_read_as_manifests(tmp_path: Path, fake_stage: Path) -> None:
    """`kubeforge run -f .` with the workdir below `.`: its state and artifact JSON are not manifests."""
    manifests = write_manifests(tmp_path / "m", pipeline_docs())
    for workdir in (tmp_path / "m" / "wd", tmp_path / "m" / ".kubeforge"):
        runner, _ = make_runner(manifests.parent, workdir, fake_stage)
        assert runner.run() == 0
        assert list(workdir.rglob("*.json")), "the run wrote JSON state below the manifests' directory"
        again, _ = make_runner(manifests.parent, workdir, fake_stage)  # would fail on 100s of bad manifests
        assert again.run() == 0
        assert set(again.outcomes.values()) == {"UpToDate"}


def test_force_reruns_one_and_dependents(tmp_path: Path, fake_stage: Path) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs())
    workdir = tmp_path / "wd"
    assert make_runner(manifests, workdir, fake_stage)[0].run() == 0
    runner, _ = make_runner(manifests, workdir, fake_stage, force=["RewardModel/rm"])
    assert runner.run() == 0
    got = {f"{k[0]}/{k[2]}": v for k, v in runner.outcomes.items()}
    assert got["TrainingJob/base"] == "UpToDate"
    assert got["RewardModel/rm"] == got["RLHFJob/rl"] == got["ModelDeployment/serve"] == "Succeeded"


def test_gate_blocks_deployment_with_reason(tmp_path: Path, fake_stage: Path) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs(eval_labels={"fake/passed": "false"}))
    workdir = tmp_path / "wd"
    runner, out = make_runner(manifests, workdir, fake_stage)
    assert runner.run() == 1
    store = StateStore(workdir)
    ev = store.find("Evaluation/ev")
    assert ev.is_true("Succeeded") and not ev.is_true("Passed")
    ready = store.find("ModelDeployment/serve").condition("Ready")
    assert ready is not None and ready.status.value == "False" and ready.reason == "GateFailed"
    assert "Evaluation/ev did not pass: rougeL 0.1 < min 0.3" in ready.message
    assert "GateFailed" in out.getvalue()
    assert not store.find("ModelDeployment/serve").events_with("Started")


def test_failure_blocks_dependents(tmp_path: Path, fake_stage: Path) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs(train_labels={"fake/fail": "true"}))
    workdir = tmp_path / "wd"
    runner, out = make_runner(manifests, workdir, fake_stage)
    assert runner.run() == 1
    store = StateStore(workdir)
    base = store.find("TrainingJob/base").condition("Succeeded")
    assert base is not None and base.reason == "InvalidInput" and base.message == "fake failure"
    rm = store.find("RewardModel/rm").condition("DependenciesReady")
    assert rm is not None and rm.reason == "DependencyFailed" and "TrainingJob/base" in rm.message
    assert "fake failure" in out.getvalue()


def test_parallel_jobs(tmp_path: Path, fake_stage: Path) -> None:
    docs = pipeline_docs()
    for d in docs[:2]:
        d["metadata"]["labels"] = {"fake/sleep": "0.6", "fake/steps": "2"}
    manifests = write_manifests(tmp_path / "m", docs)
    runner, _ = make_runner(manifests, tmp_path / "wd", fake_stage, jobs=2)
    assert runner.run() == 0
    store = StateStore(tmp_path / "wd")
    a, b = store.find("Dataset/text"), store.find("Dataset/prefs")
    # both started before either finished
    a_start, a_end = a.events_with("Started")[0].time, a.events_with("Succeeded")[0].time
    b_start, b_end = b.events_with("Started")[0].time, b.events_with("Succeeded")[0].time
    assert a_start < b_end and b_start < a_end


RUNNER_SCRIPT = textwrap.dedent(
    """
    import sys
    from kubeforge.runner.executor import Runner, RunOptions
    from kubeforge.runner.graph import load_pipeline
    from kubeforge.runner.state import StateStore, pid_alive
    manifests, workdir, fake = sys.argv[1:4]
    r = Runner(load_pipeline([manifests]), StateStore(workdir), RunOptions(smoke=False))
    r.command = lambda c, p: [sys.executable, fake, c.stage, "--config", p]
    sys.exit(r.run())
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_resumes_from_checkpoint(tmp_path: Path, fake_stage: Path, sig: signal.Signals) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs(train_labels={"fake/steps": "40", "fake/sleep": "0.1"}))
    workdir = tmp_path / "wd"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER_SCRIPT)
    argv = [sys.executable, str(script), str(manifests), str(workdir), str(fake_stage)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = StateStore(workdir)
    ckpt = workdir / "artifacts/default/trainingjob/base/g1/checkpoints"
    deadline = time.monotonic() + 60
    while not (ckpt.exists() and len(list(ckpt.glob("checkpoint-*"))) >= 5):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.1)
    stage_pid = store.find("TrainingJob/base").pid
    assert stage_pid
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    assert code == (130 if sig == signal.SIGINT else -9)
    deadline = time.monotonic() + 10  # the stage of a SIGKILLed runner dies too (PDEATHSIG)
    while pid_alive(stage_pid):
        assert time.monotonic() < deadline, "stage process outlived the runner"
        time.sleep(0.1)
    done_before = {s.key: s.events_with("Succeeded")[-1].time for s in store.all() if s.events_with("Succeeded")}
    assert len(done_before) == 3  # the Datasets
    base = store.find("TrainingJob/base").condition("Succeeded")
    if sig == signal.SIGINT:
        assert base is not None and base.reason == "Interrupted"

    assert subprocess.run(argv, capture_output=True, timeout=120).returncode == 0
    log = store.log_path(("TrainingJob", "default", "base")).read_text()
    assert "resumed from checkpoint-" in log
    resumed_at = int(log.split("resumed from checkpoint-")[1].split()[0])
    assert resumed_at >= 5
    assert log.count("step 1\n") == 1  # the resumed attempt did not start over
    for key, when in done_before.items():  # finished objects were not redone
        state = store.load(key)
        assert state is not None and state.events_with("Succeeded")[-1].time == when
        assert len(state.events_with("Started")) == 1
    base_state = store.find("TrainingJob/base")
    assert base_state.is_true("Succeeded")
    assert base_state.events_with("Interrupted") and base_state.events_with("Resuming")


# ---- status lifting, views ---------------------------------------------------------------------


def test_lift_per_kind() -> None:
    res = StageResult.model_validate({
        "succeeded": True, "artifact": {"uri": "file:///a", "digest": "sha256:1"},
        "details": {"counts": {"train": 3}, "removed": {"pii": 1}, "digest": "sha256:2"},
    })
    ds = kinds.of("Dataset").lift(res, "", {}).fields
    assert ds["artifactUri"] == "file:///a" and ds["digest"] == "sha256:2" and ds["counts"] == {"train": 3}
    assert ds["artifact"] == {"uri": "file:///a", "digest": "sha256:1"}
    ev = kinds.of("Evaluation").lift(StageResult.model_validate({
        "succeeded": True, "metrics": {"rougeL": 0.5},
        "details": {"passed": True, "sampleCount": 4, "failedThresholds": []}}), "", {}).fields
    assert ev == {"metrics": {"rougeL": 0.5}, "sampleCount": 4, "failedThresholds": [], "lineage": []}
    converted = StageResult.model_validate({
        "succeeded": True, "artifact": {"uri": "file:///md/g1/repository", "digest": "sha256:3"},
        "lineage": [{"kind": "RLHFJob", "name": "rl", "uri": "file:///rl", "digest": "sha256:4"}],
        "details": {"modelRepository": "file:///md/g1/repository", "conversion": {"sizeBytes": 10.0},
                    "quantization": {"mode": "int8-dynamic", "agreement": 0.99, "positions": 8},
                    "modelName": "chat", "models": ["chat"]}})
    md = kinds.of("ModelDeployment").lift(converted, "file:///md/g1", {})
    assert not md.problem
    assert md.fields == {
        "modelRepository": "file:///md/g1/repository", "modelDigest": "sha256:3", "conversion": {"sizeBytes": 10.0},
        "quantization": {"mode": "int8-dynamic", "agreement": 0.99, "positions": 8},
        "lineage": [{"kind": "RLHFJob", "name": "rl", "uri": "file:///rl", "digest": "sha256:4"}],
        "details": {"modelName": "chat", "models": ["chat"]}}
    assert md.conditions == [("ModelExported", "True", "Exported", "model repository at file:///md/g1/repository")]
    bad = converted.model_copy(update={"details": {"quantization": {"mode": "int8-dynamic", "agreement": "high"}}})
    assert "quantization.agreement" in kinds.of("ModelDeployment").lift(bad, "file:///md/g1", {}).problem


def test_get_describe_logs_and_report(tmp_path: Path, fake_stage: Path) -> None:
    manifests = write_manifests(tmp_path / "m", pipeline_docs(eval_labels={"fake/passed": "false"}))
    workdir = tmp_path / "wd"
    make_runner(manifests, workdir, fake_stage)[0].run()
    store = StateStore(workdir)
    buf = io.StringIO()
    Console(file=buf, width=200).print(get_table(store.all()))
    table = buf.getvalue()
    assert "TrainingJob/base" in table and "loss=0.500" in table and "GateFailed" in table
    assert "FAILED rougeL=0.100" in table

    cli = CliRunner()
    res = cli.invoke(app, ["get", "--workdir", str(workdir)])
    assert res.exit_code == 0 and "ModelDeployment/serve" in res.output
    res = cli.invoke(app, ["describe", "kfmd/serve", "--workdir", str(workdir)])
    assert res.exit_code == 0, res.output
    assert "GateFailed" in res.output and "Events" in res.output
    res = cli.invoke(app, ["describe", "TrainingJob/base", "--workdir", str(workdir)])
    assert "Lineage" in res.output and "Dataset" in res.output
    res = cli.invoke(app, ["logs", "TrainingJob/base", "--workdir", str(workdir)])
    assert res.exit_code == 0 and "step 2" in res.output
    res = cli.invoke(app, ["describe", "TrainingJob/nope", "--workdir", str(workdir)])
    assert res.exit_code == 1 and "not found" in res.output

    html = write_html(store).read_text()
    assert html.count("data:image/png;base64,") >= 4  # loss, eval metrics, dataset counts, lineage...
    assert "Lineage" in html and "Training loss" in html


def test_cli_startup_does_not_import_torch() -> None:
    code = "import sys, kubeforge.cli, kubeforge.runner.executor, kubeforge.runner.report; " \
           "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'matplotlib', " \
           "'transformers'})))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_local_stage_equals_pod(tmp_path: Path, fake_stage: Path) -> None:
    """One renderer: the local config file is the operator's ConfigMap config.yaml (same store root), the
    local argv is the Job's container command except the config path."""
    from kubeforge import builders
    from kubeforge.settings import OperatorSettings

    workdir = tmp_path / "wd"
    runner, _ = make_runner(QUICKSTART, workdir, fake_stage)
    assert runner.run() == 0
    store = StateStore(workdir)
    settings = OperatorSettings(store_root=store.store_root)
    for node in runner.pipeline:
        local_cfg = store.config_path(node.key).read_text()
        module = getattr(builders, node.resource.kind.lower())
        build = module.get_conversion_children if node.resource.kind == "ModelDeployment" else module.get_children
        children = build(node.resource, runner.inputs[node.key], settings)
        job = next(c for c in children if c["kind"] == "Job")
        assert stage_file(job) == local_cfg, node.ref
        pod_cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
        local_cmd = runner_command(StageConfig.load(store.config_path(node.key)), str(store.config_path(node.key)))
        assert pod_cmd[:-1] == local_cmd[:-1], node.ref
        assert pod_cmd[-1] == "/etc/kubeforge/config.yaml" and local_cmd[-1] == str(store.config_path(node.key))


def runner_command(config: StageConfig, path: str) -> list[str]:
    """The argv the real runner uses (not the fake stage's)."""
    return Runner(load_pipeline([QUICKSTART]), StateStore("/nonexistent"), RunOptions()).command(config, path)
