"""The `kubeforge` command line."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from . import __version__

app = typer.Typer(help="Kubeforge: declarative MLOps for language models.", no_args_is_help=True)
console = Console(stderr=True)

REPO_CRDS = Path(__file__).resolve().parents[2] / "crds"


@app.command()
def version() -> None:
    """Print the Kubeforge version."""
    typer.echo(__version__)


@app.command()
def crds(
    output: Path = typer.Option(REPO_CRDS, "--output", "-o", help="Directory for the CRD YAML files."),
    check: bool = typer.Option(False, "--check", help="Only report whether the files are up to date."),
) -> None:
    """Regenerate the CustomResourceDefinitions from the API models."""
    from . import crdgen

    if check:
        stale = crdgen.stale(output)
        if stale:
            console.print(f"[red]out of date:[/] {', '.join(stale)} — run `kubeforge crds`")
            raise typer.Exit(1)
        console.print("CRDs are up to date")
        return
    for path in crdgen.write_all(output):
        typer.echo(str(path))


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Manifest files or directories.")) -> None:
    """Validate Kubeforge manifests offline; errors name the file, object and field.

    Besides each object's own schema, objects given together are checked against each other: an
    Evaluation's Dataset must produce the records its taskType reads and fill the splits it reads.
    """
    from .manifests import ManifestError, iter_documents, parse
    from .runner.graph import compatibility_problems

    problems: list[str] = []
    parsed = []
    try:
        for doc in iter_documents(files):
            try:
                parsed.append((parse(doc.body, doc.label), doc.label))
            except ManifestError as exc:
                problems.extend(exc.problems)
    except ManifestError as exc:
        problems.extend(exc.problems)
    problems += compatibility_problems(parsed)
    if problems:
        for line in problems:
            console.print(f"[red]error[/] {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    for r, _ in parsed:
        typer.echo(f"ok {r.kind}/{r.name}")


WORKDIR_OPTION = typer.Option(Path(".kubeforge"), "--workdir", help="State, artifacts and logs of local runs.")


@app.command()
def run(
    files: list[Path] = typer.Option(..., "--filename", "-f", help="Manifest files or directories (repeatable)."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Stages run in parallel (0: 1 on machines with <=4 cores)."),
    workdir: Path = WORKDIR_OPTION,
    force: list[str] = typer.Option([], "--force", help="Re-run KIND/NAME and everything downstream (repeatable)."),
    serve: bool = typer.Option(False, "--serve", help="Keep the Triton server(s) running until Ctrl-C."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the HTML report."),
) -> None:
    """Run a pipeline locally: each stage as a subprocess, in dependency order; skips what is up to date."""
    from .runner import commands

    raise typer.Exit(commands.run(files, jobs or None, workdir, force, serve, console, html=not no_report))


@app.command()
def get(workdir: Path = WORKDIR_OPTION) -> None:
    """List the objects of local runs with their status (like `kubectl get`)."""
    from .runner import commands

    raise typer.Exit(commands.get(workdir, console))


@app.command()
def describe(ref: str = typer.Argument(..., help="KIND/NAME"), workdir: Path = WORKDIR_OPTION) -> None:
    """Conditions, lineage, metrics and events of one object of a local run."""
    from .runner import commands

    raise typer.Exit(commands.describe(ref, workdir, console))


@app.command()
def logs(
    ref: str = typer.Argument(..., help="KIND/NAME"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing while the stage runs."),
    workdir: Path = WORKDIR_OPTION,
) -> None:
    """Print the stage log of one object of a local run."""
    from .runner import commands

    raise typer.Exit(commands.logs(ref, workdir, follow, console))


@app.command()
def operator(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Namespace to watch (repeatable)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch every namespace."),
    liveness: str | None = typer.Option(
        "http://0.0.0.0:8081/healthz", "--liveness", help="kopf liveness endpoint URL (empty: off)."
    ),
    readiness: str | None = typer.Option(
        "http://0.0.0.0:8082/readyz", "--readiness",
        help="Readiness endpoint URL: started and the API server serves the Kubeforge API (empty: off).",
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Verbose logging."),
    debug: bool = typer.Option(False, "--debug", help="Debug logging."),
    standalone: bool = typer.Option(
        True, "--standalone/--peering", help="Standalone (single replica, no kopf peering objects) or peering."
    ),
) -> None:
    """Run the Kubeforge operator (kopf; by default standalone: one replica, no peering)."""
    import gc
    import threading

    from . import login

    login.keep_client_library_out()  # before kopf, which imports the client library when it can
    import kopf

    from . import (
        controllers,  # noqa: F401  (registers the handlers)
        health,
    )
    from .settings import OperatorSettings

    namespaces = list(namespace) or list(OperatorSettings.from_env().namespaces)
    if not namespaces and not all_namespaces:
        console.print("[red]error[/] pass --namespace NS (repeatable) or --all-namespaces")
        raise typer.Exit(2)
    kopf.configure(verbose=verbose, debug=debug)
    if not (verbose or debug):
        # kopf logs "Handler 'track' succeeded." for every watch event (thousands per minute at scale, and a
        # few per cent of the operator's CPU); warnings and errors of handlers still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = kopf.OperatorSettings()
    # Exact namespace names need no namespace scan. kopf would list namespaces anyway, and a namespaced
    # install is not allowed to: 9 refused attempts with backoff, about 40 s, on every start, before kopf
    # falls back to the names given. Patterns (`kf-*`) still scan, which needs the cluster-wide RBAC.
    settings.scanning.disabled = bool(namespaces) and not any(set(ns) & set("*?[]!,") for ns in namespaces)
    # What was imported (kopf, pydantic's models and schemas, the API) lives as long as the process: frozen,
    # the cyclic garbage collector stops walking it on every full collection of the objects' churn.
    gc.freeze()
    started = threading.Event()  # kopf sets it once the startup handlers are done
    server = health.serve(readiness, started) if readiness else None
    try:
        kopf.run(
            settings=settings,
            standalone=standalone,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness or None,
            ready_flag=started,
        )
    finally:
        if server is not None:
            server.stop()


dev_app = typer.Typer(help="Developer tools.", no_args_is_help=True)
cluster_app = typer.Typer(help="The local test control plane (hack/test-cluster.sh).", no_args_is_help=True)
dev_app.add_typer(cluster_app, name="cluster")
app.add_typer(dev_app, name="dev")

TEST_CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "test-cluster.sh"


def _test_cluster(action: str) -> None:
    """Thin wrapper: the script holds the logic so CI and developers run the same thing."""
    import subprocess

    if not TEST_CLUSTER_SCRIPT.exists():
        console.print(f"[red]error[/] {TEST_CLUSTER_SCRIPT} not found: `kubeforge dev` needs a source checkout")
        raise typer.Exit(1)
    raise typer.Exit(subprocess.call(["bash", str(TEST_CLUSTER_SCRIPT), action]))


@cluster_app.command("up")
def cluster_up() -> None:
    """Build the tools if needed, start the kwok-backed test cluster, print its kubeconfig path."""
    _test_cluster("up")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop and delete the test cluster."""
    _test_cluster("down")


@cluster_app.command("status")
def cluster_status() -> None:
    """Say whether the test cluster is up and list its nodes."""
    _test_cluster("status")


@cluster_app.command("kubeconfig")
def cluster_kubeconfig() -> None:
    """Print the test cluster's kubeconfig path."""
    _test_cluster("kubeconfig")


def main() -> None:
    """Entry point for `python -m kubeforge`."""
    app()
