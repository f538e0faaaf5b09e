"""The fuller Kubeforge vs lm-evaluation-harness comparison (tests/ml/test_lm_eval_parity.py is the CI case).

Same model, data and task configs as the test, with knobs the CI case keeps small: Kubeforge's default
batch size (16 sequences per forward pass, left-padded generation) against the harness at batch 1,
the harness's default 256 new tokens, and 5 GSM8K exemplars (the harness's default num_fewshot).
Batching changes floating-point sums, so log-likelihoods agree to ~1e-6 rather than bit for bit, and
greedy generations can in principle flip on near-ties; the table says how many stayed identical.

    python bench/lm_eval_parity.py [--batch 16] [--new-tokens 256] [--gsm-shots 5] [--json-out f.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "ml"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="Kubeforge sequences per forward pass")
    parser.add_argument("--harness-batch", type=int, default=1, help="lm-eval batch_size")
    parser.add_argument("--new-tokens", type=int, default=256, help="max new tokens (both sides)")
    parser.add_argument("--gsm-shots", type=int, default=5, help="GSM8K exemplars")
    parser.add_argument("--steps", type=int, default=200, help="training steps of the tiny model")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    import lm_eval
    import test_lm_eval_parity as parity  # the CI case's model, data, task YAMLs and comparison
    from conftest import stage_config

    parity.NEW_TOKENS = args.new_tokens
    parity.GSM_SHOTS = args.gsm_shots
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = parity.build_parity_model(work / "model", steps=args.steps)
        t0 = time.perf_counter()
        harness = parity.run_harness(model, work / "harness", batch=args.harness_batch)
        t1 = time.perf_counter()
        ours = parity.run_kubeforge(model, work / "kubeforge", stage_config, batch=args.batch)
        t2 = time.perf_counter()
        table = parity.compare(harness, ours)
    version = getattr(lm_eval, "__version__", "?")
    print(f"lm-eval {version} (batch {args.harness_batch}): {t1 - t0:.1f} s; "
          f"kubeforge (batch {args.batch}): {t2 - t1:.1f} s; {args.new_tokens} new tokens, {args.gsm_shots}-shot GSM8K")
    print(f"{'variant':22} {'metric':22} {'kubeforge':>10} {'lm-eval':>10}  agreement")
    for variant, row in table.items():
        agreement = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in row.items() if k not in ("kubeforge", "lm-eval"))
        for metric, value in row["lm-eval"].items():
            print(f"{variant:22} {metric:22} {row['kubeforge'][metric]:10.4f} {value:10.4f}  {agreement}")
    out = {"lmEval": version, "batch": args.batch, "newTokens": args.new_tokens, "gsmShots": args.gsm_shots,
           "table": table}
    print(json.dumps(out))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
