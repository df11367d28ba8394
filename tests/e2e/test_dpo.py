"""`train=dpo data=dpo_demo`: the trainer runs preference tuning from a checkpoint, resumes exactly.

One rank, the bundled pairs, a seed checkpoint as the "SFT" model. The
reference log-probs come from the pre-pass and are saved beside the run; an
interrupted run resumes from its checkpoint with them and ends bit-identical
to the uninterrupted one. (Topology parity: tests/parallel/test_preference_parity.py;
the loss against TRL: tests/convert/test_preference_trl.py.)
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from tests.e2e.test_training import run_trainer

STEPS = 4


def dpo_overrides(root: str, run_dir: str, init: str) -> list[str]:
    return [
        "data=dpo_demo",
        f"data.root={root}",
        "train=dpo",
        f"train.init_from={init}",
        f"run_dir={run_dir}",
        "cluster.devices_per_node=1",
        "parallel=single",
        "parallel.micro_batch_size=2",
        "train.global_batch_size=4",
        f"train.train_iters={STEPS}",
        f"train.eval_interval={STEPS}",
        "train.eval_iters=1",
        "train.preference.beta=0.5",
        "optim.lr=1e-3",
        "optim.warmup_iters=0",
        "logging.log_interval=1",
        "logging.tensorboard=false",
        "checkpoint.save_interval=null",
    ]


def rows(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def seed(ranks, data_root, tmp_path_factory) -> str:
    run_dir = str(tmp_path_factory.mktemp("dpo-seed"))
    ranks.run(
        1,
        run_trainer,
        [
            "data=demo",
            f"data.root={data_root}",
            "data.cache_mode=shared",
            f"run_dir={run_dir}",
            "parallel=single",
            "train.train_iters=0",
            "optim.warmup_iters=0",
            "logging.tensorboard=false",
        ],
    )
    return os.path.join(run_dir, "checkpoints")


@pytest.fixture(scope="module")
def uninterrupted(ranks, data_root, seed, tmp_path_factory) -> dict:
    run_dir = str(tmp_path_factory.mktemp("dpo"))
    result = ranks.run(1, run_trainer, dpo_overrides(data_root, run_dir, seed), True)[0]
    return {"run_dir": run_dir, "weights": result["weights"], "rows": rows(run_dir)}


def test_dpo_logs_preference_metrics_and_learns(uninterrupted):
    steps = [r for r in uninterrupted["rows"] if "loss" in r]
    assert [r["iteration"] for r in steps] == list(range(1, STEPS + 1))
    # The policy starts as the reference: zero rewards, DPO's loss ln 2.
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    for key in ("reward_accuracy", "rewards_chosen", "rewards_rejected", "logps_chosen"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert steps[-1]["reward_margin"] > 0 and steps[-1]["loss"] < math.log(2)
    valid = [r for r in uninterrupted["rows"] if "valid_loss" in r]
    assert len(valid) == 1 and 0.0 <= valid[0]["valid_reward_accuracy"] <= 1.0
    reference = np.load(os.path.join(uninterrupted["run_dir"], "reference_logps.npy"))
    assert reference.shape == (200, 2) and (reference < 0).all()


def test_resume_is_bit_exact(ranks, data_root, seed, uninterrupted, tmp_path):
    run_dir = str(tmp_path / "resumed")
    overrides = dpo_overrides(data_root, run_dir, seed)
    ranks.run(1, run_trainer, [*overrides, "train.exit_interval=2"])
    result = ranks.run(1, run_trainer, overrides, True)[0]
    losses = [r["loss"] for r in rows(run_dir) if "loss" in r]
    assert losses == [r["loss"] for r in uninterrupted["rows"] if "loss" in r]
    for name, tensor in uninterrupted["weights"].items():
        assert torch.equal(result["weights"][name], tensor), name
