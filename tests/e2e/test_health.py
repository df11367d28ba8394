"""Loss spikes and per-rank step times in a short 2-rank run through the real Trainer.

A loss spike is injected at one iteration (train.fault_injection: every
rank's loss and gradients x 10): the spike policy skips that update (the LR
schedule does not advance), counts it and the run goes on. Every metrics row
carries the per-rank compute time summary.
"""

from __future__ import annotations

import dataclasses

import torch

from chatbaker_megatron.config.compose import compose
from chatbaker_megatron.training.trainer import Trainer
from tests.e2e.test_launch import metrics

SPIKE_AT = 6


def run_rows(overrides: list[str]) -> list[dict] | None:
    """Body run on every rank: train; rank 0 returns the metrics rows."""
    cfg = compose(overrides)
    Trainer(cfg, dataclasses.asdict(cfg)).run()
    if torch.distributed.get_rank() != 0:
        return None
    return [r for r in metrics(cfg.run_dir) if "loss" in r]


def test_injected_spike_is_skipped_and_counted(ranks, data_root, tmp_path):
    overrides = [
        f"data.root={data_root}",
        "data.cache_mode=shared",  # one node (tests/e2e/conftest.py)
        f"run_dir={tmp_path / 'run'}",
        "train.seq_length=64",
        "train.global_batch_size=4",
        "train.train_iters=8",
        "train.eval_interval=0",
        "optim.warmup_iters=1",
        "logging.log_interval=1",
        "logging.tensorboard=false",
        "checkpoint.save_interval=null",
        "train.spike_warmup_iters=3",
        f"train.fault_injection.spike_at_iteration={SPIKE_AT}",
    ]
    rows = {r["iteration"]: r for r in ranks.run(2, run_rows, overrides)[0]}
    assert sorted(rows) == list(range(1, 9))
    before, spike, after = rows[SPIKE_AT - 1], rows[SPIKE_AT], rows[SPIKE_AT + 1]
    assert [rows[i]["skipped_spikes"] for i in range(1, 9)] == [0] * 5 + [1] * 3
    assert spike["loss"] > 5 * before["loss"]  # the injected x10
    assert spike["lr"] == before["lr"]  # no optimizer or schedule step
    assert after["lr"] != spike["lr"]
    assert after["loss"] < 1.5 * before["loss"]  # weights untouched by the spike
    assert all(r["skipped_steps"] == 0 for r in rows.values())  # not a NaN skip
    for row in rows.values():
        assert row["slowest_rank"] in (0, 1)
        assert 0 < row["rank_step_time_min_s"] <= row["rank_step_time_median_s"]
        assert row["rank_step_time_median_s"] <= row["rank_step_time_max_s"]
