"""Held-out figures of a preference run before and after training, from its run directory.

    python -m chatbaker_megatron.training.preference_report RUN_DIR

Before: the starting (SFT) model, from the reference log-probs of the held-out
pairs (`reference_logps.npy`, the pre-pass): how often it already finds the
chosen reply likelier (logps accuracy). Its DPO reward accuracy is 0 by
definition (policy = reference: every reward is 0, no pair is won).
After: the last validation row of `metrics.jsonl` (the trained policy
against that reference on the held-out pairs that validation read: train.eval_iters
global batches, going on round the held-out set from one validation to the next).

Also where a run keeps its reference log-probs (`reference_paths`, used by
training/preference.py). Imports neither torch nor megatron: the report is
instant and prints nothing but its figures.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import yaml

REFERENCE_FILE = "reference_logps"


def reference_paths(run_dir: str) -> tuple[str, str]:
    """The run's reference log-probs (float64 [pairs, 2]) and what they were computed for."""
    base = os.path.join(run_dir, REFERENCE_FILE)
    return f"{base}.npy", f"{base}.json"


def report(run_dir: str) -> str:
    values, meta = reference_paths(run_dir)
    metrics, config = (os.path.join(run_dir, name) for name in ("metrics.jsonl", "config.yaml"))
    for path in (values, meta, metrics, config):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: not found; is {run_dir} a preference run (train=dpo)?"
            )
    with open(meta, encoding="utf-8") as f:
        held_out = json.load(f)["valid_pairs"]
    if not held_out:
        raise ValueError(f"{run_dir}: no held-out pairs (data.preference.valid_fraction=0)")
    reference = np.load(values)[held_out]
    with open(metrics, encoding="utf-8") as f:
        valid = [row for row in map(json.loads, f) if "valid_reward_accuracy" in row]
    if not valid:
        raise ValueError(f"{run_dir}/metrics.jsonl: no validation row (train.eval_interval=0?)")
    after = valid[-1]
    with open(config, encoding="utf-8") as f:
        train = yaml.safe_load(f)["train"]
    # A validation reads eval_iters global batches, going on round the held-out set.
    per_validation = train["eval_iters"] * train["global_batch_size"]
    return "\n".join(
        [
            f"held-out pairs: {len(held_out)} (a validation reads {per_validation}: "
            "train.eval_iters x global_batch_size, going on round them)",
            f"before (SFT, all {len(held_out)}): logps accuracy "
            f"{np.mean(reference[:, 0] > reference[:, 1]):.1%}, "
            "reward accuracy 0.0% (policy = reference)",
            f"after (iteration {after['iteration']}, its validation): logps accuracy "
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
