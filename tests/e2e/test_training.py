"""End-to-end pretraining through the real Trainer on the bundled corpus.

Every topology starts from one seed checkpoint (a 0-iteration run), so the
loss curves must match the single-rank run; checkpoints must resume
bit-exactly on the same topology and reshard across topologies with model
and optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch

from chatbaker_megatron.checkpoint.layout import latest_checkpoint
from chatbaker_megatron.checkpoint.state import read_common
from chatbaker_megatron.config.compose import compose
from chatbaker_megatron.model.sharding import full_state
from chatbaker_megatron.training.trainer import Trainer

STEPS = 6
# fp32 on the real data; the curves differ only in reduction order.
LOSS_TOL = {"atol": 2e-5, "rtol": 0.0}


def base_overrides(data_root: str, run_dir: str, world: int) -> list[str]:
    return [
        "data=demo",
        f"data.root={data_root}",
        "data.cache_mode=shared",  # one node (tests/e2e/conftest.py)
        f"run_dir={run_dir}",
        f"cluster.devices_per_node={world}",
        "train.seq_length=64",
        "train.global_batch_size=8",
        f"train.train_iters={STEPS}",
        "train.eval_interval=0",
        "parallel.micro_batch_size=2",
        "logging.log_interval=1",
        "logging.tensorboard=false",
        "checkpoint.save_interval=null",
        "optim.warmup_iters=1",
    ]


def losses(run_dir: str) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def run_trainer(overrides: list[str], return_weights: bool = False) -> dict | None:
    """Body run on every rank: train per the overrides; rank 0 reports."""
    cfg = compose(overrides)
    trainer = Trainer(cfg, dataclasses.asdict(cfg))
    state = trainer.run()
    weights = full_state(trainer.engine.chunks) if return_weights else None
    if torch.distributed.get_rank() != 0:
        return None
    return {"state": dataclasses.asdict(state), "weights": weights}


@pytest.fixture(scope="module")
def seed_ckpt(ranks, data_root, tmp_path_factory) -> str:
    run_dir = str(tmp_path_factory.mktemp("seed"))
    ranks.run(
        1,
        run_trainer,
        base_overrides(data_root, run_dir, 1) + ["train.train_iters=0", "optim.warmup_iters=0"],
    )
    return os.path.join(run_dir, "checkpoints")


@pytest.fixture(scope="module")
def reference(ranks, data_root, seed_ckpt, tmp_path_factory) -> dict:
    run_dir = str(tmp_path_factory.mktemp("ref"))
    overrides = base_overrides(data_root, run_dir, 1) + [
        "parallel=single",
        f"train.init_from={seed_ckpt}",
    ]
    result = ranks.run(1, run_trainer, overrides, True)[0]
    return {"losses": losses(run_dir), "weights": result["weights"], "run_dir": run_dir}


def test_seed_checkpoint_is_iteration_zero(seed_ckpt):
    common = read_common(latest_checkpoint(seed_ckpt))
    assert common["train_state"]["iteration"] == 0
    assert common["topology"] == {"tp": 1, "pp": 1, "dp": 1, "vpp": 1}


def test_reference_learns(reference):
    assert len(reference["losses"]) == STEPS
    assert reference["losses"][-1] < reference["losses"][0] - 0.1


TOPOLOGIES = {
    "tp2": ["parallel=tp2"],
    "pp2": ["parallel=pp2"],
    "pp2_vpp2": ["parallel=pp2_vpp2"],
    # With both of megatron's DDP overlaps, the GPU default for this layout.
    "dp2_distributed_optimizer_overlapped": [
        "parallel=dp2",
        "parallel.distributed_optimizer=true",
        "parallel.overlap_grad_reduce=true",
        "parallel.overlap_param_gather=true",
        # A periodic save (checkpoint.format) and the final one (checkpoint.final_format).
        "checkpoint.save_interval=3",
    ],
}


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_two_rank_curve_matches_single_rank(
    ranks, data_root, seed_ckpt, reference, tmp_path, topology
):
    overrides = base_overrides(data_root, str(tmp_path), 2) + TOPOLOGIES[topology]
    ranks.run(2, run_trainer, [*overrides, f"train.init_from={seed_ckpt}"])
    torch.testing.assert_close(losses(str(tmp_path)), reference["losses"], **LOSS_TOL)
    if "checkpoint.save_interval=3" in overrides:
        saved = {
            it: read_common(os.path.join(str(tmp_path), "checkpoints", f"iter_{it:07d}"))
            for it in (3, STEPS)
        }
        assert saved[3]["optimizer_format"] == "dp_reshardable"
        assert saved[STEPS]["optimizer_format"] == "fully_reshardable"


def test_resume_is_bit_exact(ranks, data_root, seed_ckpt, tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    common = ["parallel=tp2", f"train.init_from={seed_ckpt}"]
    ranks.run(2, run_trainer, base_overrides(data_root, straight, 2) + common)
    ranks.run(
        2, run_trainer, base_overrides(data_root, split, 2) + [*common, "train.exit_interval=3"]
    )
    assert latest_checkpoint(os.path.join(split, "checkpoints")).endswith("iter_0000003")
    ranks.run(2, run_trainer, base_overrides(data_root, split, 2) + common)
    assert losses(split) == losses(straight)


def test_background_checkpoints_resume_bit_exactly(
    ranks, data_root, seed_ckpt, reference, tmp_path
):
    """checkpoint.async_save: training is unchanged by the background writes, every periodic
    checkpoint is published, and one of them resumes bit-exactly."""
    source, resumed = str(tmp_path / "source"), str(tmp_path / "resumed")
    common = [
        "parallel=tp2",
        f"train.init_from={seed_ckpt}",
        "checkpoint.async_save=true",
        "checkpoint.save_interval=2",
        "checkpoint.keep_last=5",
    ]
    ranks.run(2, run_trainer, base_overrides(data_root, source, 2) + common)
    torch.testing.assert_close(losses(source), reference["losses"], **LOSS_TOL)
    assert sorted(os.listdir(os.path.join(source, "checkpoints"))) == [
        "iter_0000002",
        "iter_0000004",
        "iter_0000006",
        "latest",
    ]
    os.makedirs(os.path.join(resumed, "checkpoints"))
    shutil.copytree(
        os.path.join(source, "checkpoints", "iter_0000004"),
        os.path.join(resumed, "checkpoints", "iter_0000004"),
    )
    with open(os.path.join(resumed, "checkpoints", "latest"), "w", encoding="utf-8") as f:
        f.write("iter_0000004\n")
    ranks.run(2, run_trainer, base_overrides(data_root, resumed, 2) + common)
    assert losses(resumed) == losses(source)[4:]


def test_eight_ranks_and_resharding(ranks, data_root, seed_ckpt, reference, tmp_path):
    """TP2 x PP2 x DP2 on 8 ranks matches single rank; its mid-run checkpoint
    (model + optimizer) continues identically at TP1 PP1 DP1 and TP1 PP1 DP4, with
    the distributed optimizer (one 8-rank run: 8 ranks on 2 cores are slow)."""
    source = str(tmp_path / "tp2_pp2_dp2")
    overrides = base_overrides(data_root, source, 8) + [
        "parallel=tp2_pp2_dp2",
        f"train.init_from={seed_ckpt}",
        "checkpoint.save_interval=3",
        "checkpoint.keep_last=5",
        # Resumed at other TP/PP below: periodic saves in the format that allows it.
        "checkpoint.format=fully_reshardable",
    ]
    ranks.run(8, run_trainer, overrides)
    torch.testing.assert_close(losses(source), reference["losses"], **LOSS_TOL)
    mid = os.path.join(source, "checkpoints", "iter_0000003")

    zero1 = "parallel.distributed_optimizer=true"
    targets = [
        ("tp1_pp1_dp1", 1, ["parallel=single", zero1]),
        ("tp1_pp1_dp4", 4, ["parallel=single", zero1]),
    ]
    for name, world, parallel in targets:
        target = str(tmp_path / name)
        os.makedirs(os.path.join(target, "checkpoints"))
        shutil.copytree(mid, os.path.join(target, "checkpoints", "iter_0000003"))
        with open(os.path.join(target, "checkpoints", "latest"), "w", encoding="utf-8") as f:
            f.write("iter_0000003\n")
        result = ranks.run(
            world, run_trainer, base_overrides(data_root, target, world) + parallel, True
        )[0]
        torch.testing.assert_close(
            losses(target), losses(source)[3:], **LOSS_TOL, msg=lambda m, n=name: f"{n}: {m}"
        )
        for key, tensor in reference["weights"].items():
            torch.testing.assert_close(
                result["weights"][key], tensor, atol=2e-4, rtol=0, msg=f"{name} {key}"
            )
    ranks.close(4)


def test_checkpoint_dir_default(data_root, tmp_path):
    cfg = compose(base_overrides(data_root, str(tmp_path), 2))
    assert cfg.checkpoint_dir == os.path.join(str(tmp_path), "checkpoints")


def test_refused_resume_keeps_the_records_and_resume_keeps_one_row_per_iteration(
    ranks, data_root, tmp_path
):
    """A resume refused at startup leaves config.yaml and metrics.jsonl as they were; a
    resume from iteration 4 after rows up to 5 were logged keeps one row per iteration."""
    run_dir = str(tmp_path)
    base = [
        *base_overrides(data_root, run_dir, 1),
        "parallel=single",
        "checkpoint.save_interval=2",
    ]
    # Killed after logging iteration 5, its last checkpoint at 4.
    ranks.run(1, run_trainer, [*base, "train.train_iters=5", "checkpoint.save_on_exit=false"])
    records = {name: (tmp_path / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    first_losses = losses(run_dir)

    with pytest.raises(AssertionError, match="optimizer state"):
        ranks.run(1, run_trainer, [*base, "parallel.distributed_optimizer=true"])
    assert {name: (tmp_path / name).read_bytes() for name in records} == records

    ranks.run(1, run_trainer, [*base, "train.train_iters=6"])
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        assert [r["iteration"] for r in map(json.loads, f)] == [1, 2, 3, 4, 5, 6]
    assert losses(run_dir)[:5] == first_losses  # the resume is bit-exact
    with open(os.path.join(run_dir, "metrics.rerun.jsonl"), encoding="utf-8") as f:
        (rerun,) = map(json.loads, f)
    assert (rerun["iteration"], rerun["resumed_from"], rerun["loss"]) == (5, 4, first_losses[4])


def test_fp16_loss_scale_overflows_are_not_faults(ranks, data_root, tmp_path):
    """fp16 starts at a 2^32 loss scale, so its first updates overflow until the scaler
    has backed off: those are skipped and counted apart, never taken for non-finite
    steps (which would halt the run after train.max_consecutive_skips). The tiny model's
    grads fit from a scale of about 2^8: 24 halvings, each after two overflows
    (hysteresis 2), so the run needs about 25 steps before its first update."""
    steps = 32
    run_dir = str(tmp_path / "fp16")
    overrides = base_overrides(data_root, run_dir, 1) + [
        "parallel=single",
        "cluster.precision=fp16",
        f"train.train_iters={steps}",
        "train.global_batch_size=2",
    ]
    state = ranks.run(1, run_trainer, overrides)[0]["state"]
    assert state["iteration"] == steps and state["skipped_steps"] == 0
    assert 0 < state["skipped_overflows"] < steps  # some updates were applied
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if "loss" in r]
    assert rows[-1]["skipped_overflows"] == state["skipped_overflows"]
    assert rows[-1]["loss_scale"] < 2.0**32
    assert rows[-1]["grad_norm"] is not None  # the last step's update was applied
