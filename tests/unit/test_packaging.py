"""The operator side stays light: no torch in the base install or on the operator's import path."""

from __future__ import annotations

import re
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


def _requirements(*extras: str) -> list[str]:
    script = ROOT / "hack" / "pyproject-requirements.py"
    return subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), ",".join(extras)],
                          check=True, capture_output=True, text=True).stdout.split("\n")


def test_train_extra_reads_s3_like_the_trainer_image() -> None:
    """`pip install kubeforge[train]` gets the s3:// backend the trainer image has; dev brings the S3 test server."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "kubeforge[s3]" in extras["train"]
    assert any(r.startswith("s3fs") for r in _requirements("train"))
    assert any(r.startswith("moto[server]") for r in extras["dev"])
    # The image's extras list adds nothing `train` lacks but QLoRA; listing s3 again is harmless (de-duplicated).
    image = _requirements("train", "qlora", "s3")
    assert len(image) == len(set(image))
    assert set(image) - set(_requirements("train")) == set(extras["qlora"])


def test_dockerfiles_and_makefile_name_existing_extras() -> None:
    """Every EXTRAS default, `make images` build arg and `make venv` extra is an extra pyproject.toml defines."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named: dict[str, str] = {}
    for path in (ROOT / "trainer-image" / "Dockerfile", ROOT / "serving" / "Dockerfile",
                 ROOT / "hack" / "build-images.sh"):
        for value in re.findall(r"EXTRAS=([\w,-]+)", path.read_text()):
            named |= {e: path.name for e in value.split(",") if e}
    for value in re.findall(r"install [^\n]*'\.\[([\w,-]+)\]'", (ROOT / "Makefile").read_text()):
        named |= {e: "Makefile" for e in value.split(",")}
    assert {"train", "qlora", "s3", "convert", "dev"} <= set(named), named
    assert not {e: f for e, f in named.items() if e not in extras}


def test_operator_and_cli_import_no_ml_stack() -> None:
    code = (
        "import sys, kubeforge.cli, kubeforge.controllers, kubeforge.runner.commands, kubeforge.crdgen;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "", f"the operator/CLI import path pulls in {out}"
