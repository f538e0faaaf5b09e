"""Bodies of `kubeforge run/get/describe/logs` (cli.py keeps only the argument parsing)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..manifests import ManifestError
from . import report
from .state import StateStore


def run(
    files: list[Path], jobs: int | None, workdir: Path, force: list[str], serve: bool, console: Console,
    html: bool = True,
) -> int:
    """Validate everything, run the pipeline, print the summary, write the HTML report; the exit code."""
    from .executor import Runner, RunOptions, default_jobs
    from .graph import load_pipeline

    try:
        pipeline = load_pipeline(files)
        for ref in force:
            pipeline.find(ref)
    except ManifestError as exc:
        for line in exc.problems:
            console.print(f"[red]error[/] {line}", highlight=False, soft_wrap=True)
        console.print(f"[red]nothing was run[/]: fix the {len(exc.problems)} problem(s) above", highlight=False)
        return 2
    except KeyError as exc:
        console.print(f"[red]error[/] --force {exc.args[0]}", highlight=False, soft_wrap=True)
        return 2
    store = StateStore(workdir)
    options = RunOptions(jobs=jobs or default_jobs(), force=force, serve=serve)
    console.print(
        f"running {len(pipeline.order)} objects from {', '.join(map(str, files))} "
        f"(workdir {store.root}, jobs {options.jobs})", highlight=False,
    )
    started = time.monotonic()
    runner = Runner(pipeline, store, options, console)
    code = runner.run()
    elapsed = time.monotonic() - started
    states = [s for _, _, s in runner.summary()]
    table = Table(title=f"kubeforge run: {elapsed:.0f}s", header_style="bold", title_justify="left")
    for col in ("OBJECT", "THIS RUN", "SUCCEEDED/READY", "REASON", "METRIC"):
        table.add_column(col, overflow="fold")
    for ref, outcome, state in runner.summary():
        status, reason, _ = report.main_condition(state)
        table.add_row(ref, outcome, status, reason, report.key_metric(state))
    (console if console.is_terminal else Console(stderr=True, width=200)).print(table)
    if html:
        try:
            path = report.write_html(store, states)
            console.print(f"report: {path}", highlight=False)
        except Exception as exc:  # the report is a convenience: never fail the run for it
            console.print(f"[yellow]warning[/] report not written: {type(exc).__name__}: {exc}", highlight=False)
    return code


def stdout_console() -> Console:
    """Console for tables on stdout: never narrower than the table when piped (like kubectl)."""
    out = Console()
    return out if out.is_terminal else Console(width=250)


def get(workdir: Path, console: Console) -> int:
    """`kubectl get kubeforge`-style table of the workdir's objects."""
    store = StateStore(workdir)
    states = store.all()
    if not states:
        console.print(f"no objects in {store.root}: run `kubeforge run -f <manifests>` first", highlight=False)
        return 1
    stdout_console().print(report.get_table(states))
    return 0


def describe(ref: str, workdir: Path, console: Console) -> int:
    """Conditions, lineage, metrics and events of one object."""
    store = StateStore(workdir)
    try:
        state = store.find(ref)
    except KeyError as exc:
        console.print(f"[red]error[/] {exc.args[0]}", highlight=False)
        return 1
    stdout_console().print(report.describe(state, store.log_path(state.key)))
    return 0


def logs(ref: str, workdir: Path, follow: bool, console: Console) -> int:
    """Print (and with -f, follow) a stage's log."""
    import sys

    from .state import pid_alive

    store = StateStore(workdir)
    try:
        state = store.find(ref)
    except KeyError as exc:
        console.print(f"[red]error[/] {exc.args[0]}", highlight=False)
        return 1
    path = store.log_path(state.key)
    if not path.exists():
        console.print(f"{ref}: no log yet ({path})", highlight=False)
        return 1
    with path.open("rb") as fh:
        sys.stdout.buffer.write(fh.read())
        sys.stdout.flush()
        while follow:
            chunk = fh.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            current = store.load(state.key)
            if current is None or not pid_alive(current.pid):
                break
            time.sleep(0.5)
    return 0
