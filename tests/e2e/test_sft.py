"""SFT starts from a PLM checkpoint (weights only) and trains on packed conversations."""

from __future__ import annotations

import os

import pytest
import torch

from chatbaker_megatron.checkpoint.layout import latest_checkpoint
from chatbaker_megatron.checkpoint.state import read_common
from tests.e2e.test_training import LOSS_TOL, base_overrides, losses, run_trainer

PLM_STEPS = 30
SFT_STEPS = 4


def sft_overrides(root: str, run_dir: str, world: int, plm: str) -> list[str]:
    return [
        "data=sft_demo",
        f"data.root={root}",
        "data.sft.packing=true",
        "train=sft",
        f"train.init_from={plm}",
        f"run_dir={run_dir}",
        f"cluster.devices_per_node={world}",
        "train.seq_length=128",
        "train.global_batch_size=4",
        f"train.train_iters={SFT_STEPS}",
        "train.eval_interval=0",
        "parallel.micro_batch_size=2",
        "logging.log_interval=1",
        "logging.tensorboard=false",
        "optim.lr=3e-4",
        "optim.warmup_iters=0",
    ]


@pytest.fixture(scope="module")
def plm(ranks, data_root, tmp_path_factory) -> dict:
    run_dir = str(tmp_path_factory.mktemp("plm"))
    overrides = base_overrides(data_root, run_dir, 1) + [
        f"train.train_iters={PLM_STEPS}",
        "parallel=single",
    ]
    ranks.run(1, run_trainer, overrides)
    return {"ckpt": os.path.join(run_dir, "checkpoints"), "final_loss": losses(run_dir)[-1]}


def test_sft_from_plm_weights_with_packing(ranks, data_root, plm, tmp_path):
    single, tp2 = str(tmp_path / "single"), str(tmp_path / "tp2_sp")
    ranks.run(
        1, run_trainer, sft_overrides(data_root, single, 1, plm["ckpt"]) + ["parallel=single"]
    )
    ranks.run(2, run_trainer, sft_overrides(data_root, tp2, 2, plm["ckpt"]) + ["parallel=tp2"])

    # Fresh counters and optimizer: the SFT run counts its own iterations from 0.
    state = read_common(latest_checkpoint(os.path.join(single, "checkpoints")))["train_state"]
    assert state["iteration"] == SFT_STEPS and state["consumed_samples"] == 4 * SFT_STEPS
    # Started from the PLM, not from scratch: a fresh tiny model starts near ln(4096) = 8.3.
    sft_losses = losses(single)
    assert sft_losses[0] < 8.0 and plm["final_loss"] < 8.0
    assert sft_losses[-1] < sft_losses[0]
    # Packed sequences (thd, cu_seqlens) under TP2 + sequence parallel match one rank.
    torch.testing.assert_close(losses(tp2), sft_losses, **LOSS_TOL)
