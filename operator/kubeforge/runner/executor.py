"""Run a pipeline on this machine: every stage as a subprocess, in dependency order.

The config and command come from the same functions the operator uses (`build_stage_config`,
`stage_command`); only the artifact store root (`file://<workdir>/artifacts`) and the config file path
differ. The `python` in the command is whichever is first on PATH: the runner puts its own
interpreter's directory first, so stages run in the runner's virtualenv.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from .. import heldout, kinds
from ..api.v1alpha1.conditions import INPUTS_CHANGED, INVALID_RESULT
from ..stage import (
    ResolvedInput,
    StageConfig,
    StageResult,
    build_stage_config,
    local_path,
    run_name,
    stage_command,
)
from .graph import Key, Node, Pipeline, local_source_files, ref_of
from .state import ResourceState, StateStore, pid_alive

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 10.0
EXIT_INTERRUPTED = 130


class Outcome:
    """How one object ended in this run."""

    SUCCEEDED = "Succeeded"
    SKIPPED = "UpToDate"
    FAILED = "Failed"
    BLOCKED = "Blocked"
    INTERRUPTED = "Interrupted"


@dataclass
class RunOptions:
    """Knobs of `kubeforge run`."""

    jobs: int = 1
    force: list[str] = field(default_factory=list)
    serve: bool = False
    smoke: bool = True
    report: bool = True


@dataclass
class Running:
    """A stage process in flight."""

    node: Node
    config: StageConfig
    proc: subprocess.Popen[bytes]
    started: float
    task: TaskID | None = None
    progress_mtime: float = 0.0


def default_jobs() -> int:
    """Parallel stages by default: 1 on small machines (each stage already uses every core)."""
    return 1 if (os.cpu_count() or 1) <= 4 else 2


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the stage dies with the runner, even when the runner is SIGKILLed."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stage_env() -> dict[str, str]:
    """Environment of stage subprocesses: the runner's venv first on PATH, metrics on loopback only."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("KUBEFORGE_METRICS_ADDR", "127.0.0.1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def artifact_of(state: ResourceState) -> tuple[str, str | None] | None:
    """(uri, digest) an object produced, from its status (Datasets keep `artifactUri` + `digest`)."""
    st = state.status
    art = st.get("artifact")
    if isinstance(art, dict) and art.get("uri"):
        return str(art["uri"]), art.get("digest")
    if st.get("artifactUri"):
        return str(st["artifactUri"]), st.get("digest")
    return None


def run_digests(node: Node, *configs: StageConfig) -> list[str]:
    """Skip keys, one per config: its digest (spec + resolved inputs) plus the bytes of the node's local
    source files, which are read once for all of them."""
    hashes = [hashlib.sha256(config.digest().encode()) for config in configs]
    for path in local_source_files(node.resource):
        for h in hashes:
            h.update(str(path).encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                for h in hashes:
                    h.update(chunk)
    return ["sha256:" + h.hexdigest() for h in hashes]


class ProgressInfo(ProgressColumn):
    """`step/total  loss 1.234  ETA 12s` from the task's fields."""

    def render(self, task: Task) -> Text:
        """Text shown right of the bar."""
        f = task.fields
        parts = []
        if task.total:
            parts.append(f"{int(task.completed)}/{int(task.total)}")
        if f.get("loss") is not None:
            parts.append(f"loss {f['loss']:.3f}")
        if f.get("eta") is not None:
            parts.append(f"ETA {int(f['eta'])}s")
        return Text("  ".join(parts), style="cyan")


class Runner:
    """Schedules the stages of a pipeline and keeps their state."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: StateStore,
        options: RunOptions | None = None,
        console: Console | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.options = options or RunOptions()
        self.console = console or Console(stderr=True)
        self.states: dict[Key, ResourceState] = {}
        self.inputs: dict[Key, dict[str, ResolvedInput]] = {}
        self.outcomes: dict[Key, str] = {}
        self.running: dict[Key, Running] = {}
        self.forced: set[Key] = set()
        for ref in self.options.force:
            self.forced.update(self.pipeline.downstream(self.pipeline.find(ref).key))
        self.started = time.monotonic()
        self.serving: list[Any] = []
        # argv of a stage: the container command with the local config path (tests swap in a fake stage)
        self.command: Callable[[StageConfig, str], list[str]] = lambda c, p: stage_command(c, config_path=p)

    # ---- state helpers -------------------------------------------------------------------------

    def _save(self, state: ResourceState) -> None:
        self.store.save(state)

    def _recover(self, node: Node) -> ResourceState:
        """Load state; a stage left `Running` by a runner that died is marked Interrupted."""
        state = self.store.load_or_new(node.key, node.source)
        state.depends_on = [ref_of(k) for k in node.dep_keys()]
        if node.resource.kind == "Evaluation":
            spec: Any = node.resource.spec  # type: ignore[attr-defined]
            state.main_metric = str((spec.thresholds[0].metric if spec.thresholds else spec.metrics[0]).value)
            if spec.thresholds and spec.thresholds[0].variant:  # gated on a prompt variant: `metric[variant]`
                state.main_metric += f"[{spec.thresholds[0].variant}]"
        cond = state.condition("Succeeded")
        if cond is not None and cond.reason == "Running" and not pid_alive(state.pid):
            state.set_condition("Succeeded", "Unknown", "Interrupted",
                                f"the runner stopped while the stage ran (pid {state.pid}); it resumes on the next run")
            state.event("Interrupted", "runner went away while the stage was running", warning=True)
            state.pid = None
            self._save(state)
        return state

    # ---- scheduling ----------------------------------------------------------------------------

    def _resolve(self, node: Node) -> dict[str, ResolvedInput] | str:
        """Inputs from upstream results, or the reason they are not available."""
        inputs: dict[str, ResolvedInput] = {}
        for dep in node.input_deps():
            key = (dep.kind, dep.namespace, dep.name)
            produced = artifact_of(self.states[key])
            if produced is None:
                return f"{dep.ref} has no artifact"
            inputs[dep.key] = ResolvedInput(kind=dep.kind, name=dep.name, uri=produced[0], digest=produced[1])
        if node.resource.kind == "ModelDeployment":  # quantization parity text (best effort)
            held_out = heldout.resolve_held_out(node.resource, self._body)  # type: ignore[arg-type]
            if held_out is not None:
                inputs[heldout.HELD_OUT] = held_out
        return inputs

    def _body(self, key: Key) -> dict[str, Any] | None:
        """An object as the operator reads it: spec from its manifest, status from the local state."""
        node, state = self.pipeline.nodes.get(key), self.states.get(key)
        if node is None or state is None:
            return None
        spec: Any = node.resource.spec  # type: ignore[attr-defined]
        return {"metadata": {"generation": state.generation}, "spec": spec.to_wire(), "status": state.status}

    def render(self, node: Node, inputs: dict[str, ResolvedInput], run: str | None = None) -> StageConfig:
        """The StageConfig of a node (the same renderer the operator uses); `run` names its output folder."""
        return build_stage_config(node.resource, inputs, store_root=self.store.store_root, run=run)

    def _gate(self, node: Node) -> str | None:
        """Why a ModelDeployment may not be promoted, or None when every gate Evaluation passed."""
        spec: Any = node.resource.spec  # type: ignore[attr-defined]
        problems = []
        for dep in node.gate_deps():
            key = (dep.kind, dep.namespace, dep.name)
            st = self.states[key]
            if not st.is_true("Succeeded"):
                problems.append(f"{dep.ref} did not succeed")
                continue
            if not st.is_true("Passed"):
                failed = st.status.get("failedThresholds") or []
                cond = st.condition("Passed")
                detail = "; ".join(failed) if failed else (cond.message if cond else "no Passed condition")
                problems.append(f"{dep.ref} did not pass: {detail}")
                continue
            if spec.gate.require_same_model:
                ours, theirs = self.inputs[node.key].get("model"), self.inputs.get(key, {}).get("model")
                if ours is not None and theirs is not None and (ours.digest, ours.uri) != (theirs.digest, theirs.uri):
                    problems.append(
                        f"{dep.ref} evaluated {theirs.kind}/{theirs.name}, not the deployed {ours.kind}/{ours.name} "
                        f"(gate.requireSameModel)"
                    )
        return "; ".join(problems) if problems else None

    def _prepare(self, node: Node) -> StageConfig | None:
        """Decide what to do with a node whose dependencies finished; None when it is settled already."""
        state = self.states[node.key]
        gate = {(d.kind, d.namespace, d.name) for d in node.gate_deps()}
        bad_inputs = [
            ref_of(k) for k in node.dep_keys()
            if k not in gate and self.outcomes.get(k) not in (Outcome.SUCCEEDED, Outcome.SKIPPED)
        ]
        if bad_inputs:
            msg = f"waiting on {', '.join(bad_inputs)}, which did not succeed"
            state.set_condition("DependenciesReady", "False", "DependencyFailed", msg)
            self._set_main(state, "False", "DependencyFailed", msg)
            state.event("DependencyFailed", msg, warning=True)
            self._finish(node, state, Outcome.BLOCKED)
            return None
        resolved = self._resolve(node)
        if isinstance(resolved, str):
            state.set_condition("DependenciesReady", "False", "MissingArtifact", resolved)
            self._finish(node, state, Outcome.BLOCKED)
            return None
        self.inputs[node.key] = resolved
        state.set_condition("DependenciesReady", "True", "Ready", "all references resolved")
        # Skip keys are taken without the run folder (it is named after the generation they decide).
        digest, spec_digest = run_digests(node, self.render(node, resolved), self.render(node, {}))
        config = self.render(node, resolved, run_name(state.generation))
        if node.resource.kind == "ModelDeployment":
            blocked = self._gate(node)
            if blocked:
                msg = f"promotion gate failed: {blocked}"
                state.set_condition("Ready", "False", "GateFailed", msg)
                state.event("GateFailed", msg, warning=True)
                self._finish(node, state, Outcome.BLOCKED)
                return None
        up_to_date = (
            node.key not in self.forced
            and state.run_digest == digest
            and state.is_true("Succeeded")
            and config.result_path is not None
            and local_path(config.result_path).exists()
        )
        keep = (  # only inputs moved, and the object asks to keep its result (spec.rerunOnInputChange: false)
            not up_to_date
            and node.key not in self.forced
            and not getattr(node.resource.spec, "rerun_on_input_change", True)  # type: ignore[attr-defined]
            and state.spec_digest == spec_digest
            and state.is_true("Succeeded")
            and config.result_path is not None
            and local_path(config.result_path).exists()
        )
        if keep:
            msg = "inputs moved since this result was made; kept (spec.rerunOnInputChange: false)"
            state.set_condition("DependenciesReady", "True", INPUTS_CHANGED, msg)
            state.event(INPUTS_CHANGED, msg)
            self._finish(node, state, Outcome.SKIPPED)
            return None
        if up_to_date:
            state.event("UpToDate", f"spec and inputs unchanged ({digest[:19]}); skipped")
            if node.resource.kind == "ModelDeployment" and not state.is_true("Ready"):
                state.set_condition("Ready", "True", "Converted", "model repository is up to date")
            self._finish(node, state, Outcome.SKIPPED)
            return None
        if state.run_digest != digest or node.key in self.forced:
            if state.run_digest is not None:
                state.generation += 1  # a new run folder: dependents keep the artifact their lineage names
                config = self.render(node, resolved, run_name(state.generation))
            out_dir = local_path(config.output_uri)
            if out_dir.exists():
                shutil.rmtree(out_dir)  # left by another run of this workdir: never resume its checkpoints
            state.run_digest = digest
            state.spec_digest = spec_digest
        return config

    def _set_main(self, state: ResourceState, status: str, reason: str, message: str) -> None:
        """Succeeded for bounded kinds; ModelDeployment also carries Ready."""
        state.set_condition("Succeeded", status, reason, message)
        if state.kind == "ModelDeployment":
            state.set_condition("Ready", status, reason, message)

    def _launch(self, node: Node, config: StageConfig, progress: Progress) -> None:
        state = self.states[node.key]
        cfg_path = self.store.config_path(node.key)
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(config.dump())
        for p in (config.result_path, config.progress_path):
            if p:
                local_path(p).unlink(missing_ok=True)
        local_path(config.output_uri).mkdir(parents=True, exist_ok=True)
        argv = self.command(config, str(cfg_path))
        ckpts = newest_checkpoints(local_path(config.checkpoint_uri)) if config.checkpoint_uri else []
        if ckpts:
            state.event("Resuming", f"resuming from {ckpts[-1].name}")
        log = self.store.log_path(node.key).open("ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=stage_env(),
            start_new_session=True, preexec_fn=_set_pdeathsig if sys.platform == "linux" else None,
        )
        log.close()
        state.pid = proc.pid
        if not (ckpts and state.status.get("startTime")):
            state.status["startTime"] = _now()
        state.status.pop("completionTime", None)
        self._set_main(state, "Unknown", "Running", f"{config.stage} stage running (pid {proc.pid})")
        state.event("Started", f"{config.stage} stage started: {' '.join(argv)}")
        self._save(state)
        if not ckpts:
            self.store.history_path(node.key).unlink(missing_ok=True)
        task = progress.add_task(node.ref, total=None, loss=None, eta=None)
        self.running[node.key] = Running(node=node, config=config, proc=proc, started=time.monotonic(), task=task)
        self.console.print(f"[bold blue]▶[/] {node.ref}: {config.stage} started", highlight=False)

    def _poll_progress(self, run: Running, progress: Progress) -> None:
        if not run.config.progress_path:
            return
        path = local_path(run.config.progress_path)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == run.progress_mtime:
            return
        run.progress_mtime = mtime
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return
        state = self.states[run.node.key]
        state.status["progress"] = data
        with self.store.history_path(run.node.key).open("a") as fh:
            fh.write(json.dumps({"time": time.time(), **data}) + "\n")
        if run.task is not None:
            progress.update(
                run.task, total=data.get("totalSteps"), completed=data.get("step") or 0,
                loss=data.get("loss"), eta=data.get("etaSeconds"),
            )
        self._save(state)

    def _reap(self, run: Running, progress: Progress) -> None:
        node, state = run.node, self.states[run.node.key]
        self._poll_progress(run, progress)
        code = run.proc.returncode
        elapsed = time.monotonic() - run.started
        result: StageResult | None = None
        if run.config.result_path and local_path(run.config.result_path).exists():
            try:
                result = StageResult.model_validate_json(local_path(run.config.result_path).read_text())
            except ValueError as exc:
                result = StageResult(succeeded=False, reason="BadResult", message=f"unreadable result.json: {exc}")
        if result is None:
            tail = _log_tail(self.store.log_path(node.key))
            result = StageResult(
                succeeded=False, reason="StageCrashed", message=f"exit code {code} without a result; {tail}"
            )
        state.pid = None
        meaning = kinds.of(node.resource.kind)
        ok = result.succeeded and code == 0
        # The operator's meaning (kinds.py): same fields, conditions and refusal.
        lifted = meaning.lift(result, run.config.output_uri, self.inputs[node.key])
        fields = lifted.fields
        if ok and lifted.problem:
            ok = False
            result = result.model_copy(update={"succeeded": False, "reason": INVALID_RESULT,
                                               "message": lifted.problem})
        extra = lifted.conditions if ok else meaning.failed_conditions()
        keep = {k: v for k, v in state.status.items() if k in ("conditions", "observedGeneration", "startTime")}
        state.status = {**keep, **fields, "completionTime": _now()}
        if node.resource.kind == "ModelDeployment":
            state.set_condition("Succeeded", "True" if ok else "False", result.reason, result.message)
            state.set_condition(
                "Ready", "True" if ok else "False", "Converted" if ok else result.reason,
                "model repository written" if ok else result.message,
            )
        else:
            self._set_main(state, "True" if ok else "False", result.reason, result.message)
        for ctype, status, reason, message in extra:
            state.set_condition(ctype, status, reason, message)
        state.event("Succeeded" if ok else "Failed", f"{result.message} ({elapsed:.0f}s)".strip(), warning=not ok)
        self._finish(node, state, Outcome.SUCCEEDED if ok else Outcome.FAILED)
        if run.task is not None:
            progress.remove_task(run.task)
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        self.console.print(f"{mark} {node.ref}: {result.reason} in {elapsed:.0f}s — {result.message}", highlight=False)
        if not ok:
            self.console.print(f"  log: {self.store.log_path(node.key)}", highlight=False)

    def _finish(self, node: Node, state: ResourceState, outcome: str) -> None:
        self.outcomes[node.key] = outcome
        self._save(state)
        if outcome == Outcome.SKIPPED:
            self.console.print(f"[dim]= {node.ref}: up to date[/]", highlight=False)
        elif outcome == Outcome.BLOCKED:
            cond = state.condition("Ready") if node.resource.kind == "ModelDeployment" else None
            cond = cond or state.condition("DependenciesReady") or state.condition("Succeeded")
            reason = f"{cond.reason}: {cond.message}" if cond else "blocked"
            self.console.print(f"[yellow]■[/] {node.ref}: {reason}", highlight=False)

    def _interrupt(self, progress: Progress) -> None:
        """Stop running stages (SIGTERM, then SIGKILL) and mark them Interrupted; checkpoints stay."""
        for run in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for run in self.running.values():
            try:
                run.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
            state = self.states[run.node.key]
            state.pid = None
            self._poll_progress(run, progress)
            msg = "interrupted; the next `kubeforge run` resumes from the newest checkpoint"
            self._set_main(state, "Unknown", "Interrupted", msg)
            state.event("Interrupted", msg, warning=True)
            self.outcomes[run.node.key] = Outcome.INTERRUPTED
            self._save(state)
        self.running.clear()

    def _loop(self, progress: Progress) -> None:
        order = list(self.pipeline.order)
        pending = list(order)
        while pending or self.running:
            for key, run in list(self.running.items()):
                if run.proc.poll() is None:
                    self._poll_progress(run, progress)
                else:
                    del self.running[key]
                    self._reap(run, progress)
            for key in list(pending):
                node = self.pipeline.nodes[key]
                if any(k not in self.outcomes for k in node.dep_keys()):
                    continue
                if len(self.running) >= max(1, self.options.jobs):
                    break
                pending.remove(key)
                config = self._prepare(node)
                if config is not None:
                    self._launch(node, config, progress)
            if self.running:
                time.sleep(POLL_SECONDS)

    def run(self) -> int:
        """Run everything; 0 when all objects succeeded (or were up to date), 130 when interrupted."""
        for node in self.pipeline:
            self.states[node.key] = self._recover(node)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        # A shell starts background jobs with SIGINT ignored and Python keeps that: restore Ctrl-C.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), ProgressInfo(), TimeElapsedColumn(),
            console=self.console, transient=True, disable=not self.console.is_terminal,
        )
        code = 0
        try:
            with progress:
                try:
                    self._loop(progress)
                except KeyboardInterrupt:
                    self._interrupt(progress)
                    self.console.print("[yellow]interrupted[/]: run again to resume", highlight=False)
                    code = EXIT_INTERRUPTED
            if code == 0:
                code = self._serve_phase()
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
            for server in self.serving:
                with contextlib.suppress(Exception):
                    server.stop()
        if code == 0 and any(o in (Outcome.FAILED, Outcome.BLOCKED) for o in self.outcomes.values()):
            code = 1
        return code

    def _serve_phase(self) -> int:
        """Start Triton for each converted ModelDeployment, smoke-test it, stop (or keep with --serve)."""
        wanted = (Outcome.SUCCEEDED, Outcome.SKIPPED) if self.options.serve else (Outcome.SUCCEEDED,)
        deployments = [
            n for n in self.pipeline if n.resource.kind == "ModelDeployment" and self.outcomes.get(n.key) in wanted
        ]
        if not deployments or not (self.options.smoke or self.options.serve):
            return 0
        from . import serve

        code = 0
        for node in deployments:
            state = self.states[node.key]
            try:
                server, smoke = serve.start_and_smoke(node, state, self.store.dir(node.key) / "tritonserver.log")
            except Exception as exc:  # a server that does not come up is a failed deployment
                msg = f"serving failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]
                state.set_condition("Ready", "False", "ServingFailed", msg)
                state.event("ServingFailed", msg, warning=True)
                self._save(state)
                self.outcomes[node.key] = Outcome.FAILED
                self.console.print(f"[red]✗[/] {node.ref}: {msg}", highlight=False)
                code = 1
                continue
            self.serving.append(server)
            state.status["endpoints"] = server.endpoints()
            state.status["smoke"] = smoke
            http = server.endpoints().get("http")
            state.set_condition("Ready", "True", "Serving", f"Triton serves {state.name} at {http}")
            state.event("Serving", f"endpoints {server.endpoints()}; smoke: {smoke.get('summary', '')}")
            self._save(state)
            eps = server.endpoints()
            self.console.print(
                f"[green]●[/] {node.ref}: Triton at {eps['http']} (HTTP), {eps['grpc']} (gRPC), {eps['metrics']}\n"
                f"  smoke: {smoke['summary']}  ({smoke['requestMs']} ms/request)", highlight=False,
            )
        if self.options.serve and self.serving:
            self.console.print("[bold]serving[/] — press Ctrl-C to stop", highlight=False)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        for node in deployments:
            state = self.states[node.key]
            if state.condition("Ready") and state.condition("Ready").reason == "Serving":  # type: ignore[union-attr]
                msg = "smoke test passed; server stopped (use --serve to keep it running)"
                state.status.pop("endpoints", None)
                state.set_condition("Ready", "True", "Verified", msg)
                state.event("Stopped", msg)
                self._save(state)
        return code

    def summary(self) -> list[tuple[str, str, ResourceState]]:
        """(ref, outcome, state) of every object, in run order."""
        return [(n.ref, self.outcomes.get(n.key, "NotRun"), self.states[n.key]) for n in self.pipeline]


def newest_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete HF checkpoints (with trainer_state.json), oldest first: what the stage will resume from."""
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _now() -> str:
    from ..api.v1alpha1.status import now_rfc3339

    return now_rfc3339()


def _log_tail(path: Path, lines: int = 3) -> str:
    """Last error-looking line of a stage log, for one-line status messages."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    errors = [t for t in text if t.startswith("error") or "Error" in t]
    pick = errors[-1:] or text[-lines:]
    return " | ".join(pick)[:400] + f" (see {path})"

