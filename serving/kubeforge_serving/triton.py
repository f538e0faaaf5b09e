"""Install and run the real `tritonserver` binary shipped in the nvidia-pytriton wheel.

Why this shape:
- nvidia-pytriton pins numpy<2 and tritonclient~=2.50, so it is unpacked with `pip --no-deps
  --target` into a cache dir instead of the main venv.
- The python backend stub embeds CPython and takes its site-packages from the `python3` first on
  PATH (PYTHONPATH is ignored). With numpy 2 the stub's pybind11 reads numpy 1 descriptor layouts
  and every output tensor fails with "output tensor shape does not match size", so the server side
  gets its own small venv (numpy<2 + onnxruntime), put first on PATH when the server starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import ServingError

PYTRITON_VERSION = "0.7.0"
SERVER_PACKAGES = ["numpy<2"]
CACHE_ENV = "KUBEFORGE_TRITON_HOME"
MARKER = ".kubeforge-install.json"


def cache_root() -> Path:
    """`$KUBEFORGE_TRITON_HOME`, else ~/.cache/kubeforge/triton."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kubeforge" / "triton")


def _py_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _onnxruntime_req() -> str:
    """Same onnxruntime as the main venv, so Triton runs what the parity check ran."""
    try:
        import onnxruntime

        return f"onnxruntime=={onnxruntime.__version__}"
    except ImportError:
        return "onnxruntime>=1.20"


@dataclass(frozen=True)
class TritonInstall:
    """Paths of an unpacked Triton server and its python-backend environment."""

    root: Path

    @property
    def server_dir(self) -> Path:
        return self.root / "pkg" / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def caches(self) -> Path:
        return self.server_dir / "caches"

    @property
    def libs(self) -> Path:
        return self.root / "pkg" / "nvidia_pytriton.libs"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    def env(self) -> dict[str, str]:
        """Environment for tritonserver: bundled libs + libpython, the server venv first on PATH."""
        env = dict(os.environ)
        libdir = str(sysconfig.get_config_var("LIBDIR") or "")
        ld = [str(self.libs), libdir, env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in ld if p)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the repository (and its digest) unchanged
        return env

    def ok(self) -> bool:
        return (self.root / MARKER).is_file() and self.binary.is_file()


def install_triton(root: str | Path | None = None, force: bool = False, quiet: bool = True) -> TritonInstall:
    """Unpack nvidia-pytriton's tritonserver and build the python-backend venv (idempotent, cached).

    Needs the package index once; later calls return the cached install immediately.
    """
    base = Path(root) if root else cache_root()
    inst = TritonInstall(base / f"pytriton-{PYTRITON_VERSION}-py{_py_tag()}")
    if inst.ok() and not force:
        return inst
    if inst.root.exists():
        shutil.rmtree(inst.root)
    inst.root.mkdir(parents=True)
    pip_q = ["-q"] if quiet else []

    def run(cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise ServingError(
                f"installing Triton failed: {' '.join(cmd[:4])}...: {tail[0]}", reason="TritonInstallFailed"
            )

    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            *pip_q,
            "--no-deps",
            "--target",
            str(inst.root / "pkg"),
            f"nvidia-pytriton=={PYTRITON_VERSION}",
        ]
    )
    # The venv must use this interpreter's version: the stub links against libpython<ver>.
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", str(inst.venv)])
    run([str(inst.venv / "bin" / "python"), "-m", "pip", "install", *pip_q, *SERVER_PACKAGES, _onnxruntime_req()])
    shutil.copytree(inst.server_dir / "backends", inst.backends)
    stub = inst.server_dir / "python_backend_stubs" / _py_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(
            f"nvidia-pytriton {PYTRITON_VERSION} has no python backend stub for Python {_py_tag()}",
            reason="TritonInstallFailed",
        )
    shutil.copy2(stub, inst.backends / "python" / "triton_python_backend_stub")
    inst.binary.chmod(0o755)
    (inst.root / MARKER).write_text(json.dumps({"pytriton": PYTRITON_VERSION, "python": _py_tag()}))
    return inst


def find_install() -> TritonInstall | None:
    """The cached install, if `install-triton` has run."""
    inst = TritonInstall(cache_root() / f"pytriton-{PYTRITON_VERSION}-py{_py_tag()}")
    return inst if inst.ok() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A tritonserver process on 127.0.0.1 in explicit model-control mode.

    Use as a context manager; `start()` returns once /v2/health/ready answers (and the requested
    models are loaded), `stop()` sends SIGTERM and waits for a clean exit.
    """

    def __init__(
        self,
        repository: str | Path,
        models: list[str] | None = None,
        install: TritonInstall | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: str | Path | None = None,
        extra_args: list[str] | None = None,
        exit_timeout: int = 5,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.models = list(models or [])
        self.install = install or find_install() or install_triton()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = Path(log_path) if log_path else self.repository.parent / "tritonserver.log"
        self.extra_args = list(extra_args or [])
        self.exit_timeout = exit_timeout  # Triton waits this long for open connections on SIGTERM
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        i = self.install
        cmd = [
            str(i.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={i.backends}",
            f"--cache-directory={i.caches}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
        ]
        cmd += [f"--load-model={m}" for m in self.models]
        return cmd + self.extra_args

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> TritonServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.install.env(), start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServingError(
                    f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}", reason="ServerFailed"
                )
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise ServingError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}", reason="ServerFailed")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), SIGKILL only after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# ---------------------------------------------------------------- CLI


def install_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubeforge_serving install-triton", description=install_main.__doc__)
    p.add_argument("--root", help=f"cache dir (default ${CACHE_ENV} or ~/.cache/kubeforge/triton)")
    p.add_argument("--force", action="store_true", help="reinstall even when cached")
    a = p.parse_args(argv)
    inst = install_triton(a.root, force=a.force, quiet=True)
    print(json.dumps({"root": str(inst.root), "binary": str(inst.binary), "venv": str(inst.venv)}))
    return 0


install_main.__doc__ = "Install the tritonserver binary (nvidia-pytriton wheel) and its python-backend venv."


def serve_main(argv: list[str] | None = None) -> int:
    """Run tritonserver against a repository until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(prog="kubeforge_serving serve", description=serve_main.__doc__)
    p.add_argument("--repository", required=True, help="Triton model repository")
    p.add_argument("--model", action="append", default=[], help="model to load (repeatable; default: all)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log", help="log file (default: <repository>/../tritonserver.log)")
    a = p.parse_args(argv)
    repo = Path(a.repository)
    models = a.model or sorted(d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file())
    server = TritonServer(
        repo, models, http_port=a.http_port, grpc_port=a.grpc_port, metrics_port=a.metrics_port, log_path=a.log
    )
    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    with server:
        print(
            json.dumps(
                {"http": server.http_url, "grpc": server.grpc_url, "metrics": server.metrics_url, "models": models}
            ),
            flush=True,
        )
        while not stop["now"] and server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    return 0
