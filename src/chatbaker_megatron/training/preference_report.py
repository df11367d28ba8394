"""Held-out figures of a preference run before and after training, from its run directory.

    python -m chatbaker_megatron.training.preference_report RUN_DIR

Before: the starting (SFT) model, from the reference log-probs of the held-out
pairs (`reference_logps.npy`, the pre-pass): how often it already finds the
chosen reply likelier (logps accuracy). Its DPO reward accuracy is 0 by
definition (policy = reference: every reward is 0, no pair is won).
After: the last validation row of `metrics.jsonl` (the trained policy
against that reference on the same held-out pairs).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from chatbaker_megatron.training.preference import reference_paths


def report(run_dir: str) -> str:
    values, meta = reference_paths(run_dir)
    for path in (values, meta, os.path.join(run_dir, "metrics.jsonl")):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: not found; is {run_dir} a preference run (train=dpo)?"
            )
    with open(meta, encoding="utf-8") as f:
        held_out = json.load(f)["valid_pairs"]
    if not held_out:
        raise ValueError(f"{run_dir}: no held-out pairs (data.preference.valid_fraction=0)")
    reference = np.load(values)[held_out]
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        valid = [row for row in map(json.loads, f) if "valid_reward_accuracy" in row]
    if not valid:
        raise ValueError(f"{run_dir}/metrics.jsonl: no validation row (train.eval_interval=0?)")
    after = valid[-1]
    return "\n".join(
        [
            f"held-out pairs: {len(held_out)}",
            f"before (SFT): logps accuracy {np.mean(reference[:, 0] > reference[:, 1]):.1%}, "
            "reward accuracy 0.0% (policy = reference)",
            f"after (iteration {after['iteration']}): logps accuracy "
            f"{after['valid_logps_accuracy']:.1%}, reward accuracy "
            f"{after['valid_reward_accuracy']:.1%}, reward margin {after['valid_reward_margin']:.3f}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        print(report(args[0]))
    except (FileNotFoundError, ValueError) as err:
        print(f"preference_report: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
