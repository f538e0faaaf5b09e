"""The operator side stays light: no torch in the base install or on the operator's import path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "trl", "peft", "deepspeed", "onnxruntime", "datasets")


def test_base_dependencies_exclude_the_ml_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert not [name for name in HEAVY if name in base], base
    assert {"train", "serve", "dev"} <= set(project["optional-dependencies"])
    assert "torch==2.13.0" in project["optional-dependencies"]["ml"]
    assert {"kubeforge[ml]"} <= set(project["optional-dependencies"]["train"])


def test_image_requirements_come_from_pyproject_extras() -> None:
    """The images install what `pip install .[EXTRAS]` would: base deps plus the extras, nested ones expanded."""
    script = ROOT / "hack" / "pyproject-requirements.py"
    out = subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), "convert"],
                         check=True, capture_output=True, text=True).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert out[: len(project["dependencies"])] == project["dependencies"]
    assert set(extras["ml"]) | set(extras["serve"]) <= set(out)
    assert not any(r.startswith("kubeforge[") for r in out)
    bad = subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no extra named 'nope'" in bad.stderr


def test_operator_and_cli_import_no_ml_stack() -> None:
    code = (
        "import sys, kubeforge.cli, kubeforge.controllers, kubeforge.runner.commands, kubeforge.crdgen;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "", f"the operator/CLI import path pulls in {out}"
