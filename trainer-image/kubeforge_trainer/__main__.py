"""`python -m kubeforge_trainer <stage> --config config.yaml` — the container entrypoint."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kubeforge.stage import StageConfig

from .runtime import run_stage

# stage name → module exposing `run(config, reporter) -> StageResult`
STAGES = {
    "prepare": "kubeforge_trainer.prepare",
    "pretrain": "kubeforge_trainer.train",
    "sft": "kubeforge_trainer.train",
    "classification": "kubeforge_trainer.classify",
    "regression": "kubeforge_trainer.classify",
    "reward": "kubeforge_trainer.reward",
    "rlhf": "kubeforge_trainer.rlhf",
    "evaluate": "kubeforge_trainer.evaluate",
}


def make_parser() -> argparse.ArgumentParser:
    """Argument parser shared by all stages."""
    p = argparse.ArgumentParser(prog="python -m kubeforge_trainer", description=__doc__)
    p.add_argument("stage", choices=sorted(STAGES), help="Stage to run.")
    p.add_argument("--config", required=True, help="StageConfig YAML rendered by the operator or `kubeforge run`.")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, load the config with the shared models, run the stage."""
    args = make_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        config = StageConfig.load(args.config)
        config.typed()  # the same pydantic validation the API server's CRD mirrors
    except Exception as exc:
        print(f"error: invalid stage config {args.config}: {exc}", file=sys.stderr)
        return 2
    if config.stage != args.stage:
        print(f"error: config is for stage {config.stage!r}, not {args.stage!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[args.stage])
    return run_stage(module.run, config)


if __name__ == "__main__":
    sys.exit(main())
