"""Resume with changed optimizer settings (issue 25): a changed optim.lr on a run saved with
the distributed optimizer died with a raw KeyError in megatron's load_state_dict."""

from __future__ import annotations

import dataclasses

import pytest

from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from tests.support.tiny_checkpoints import TINY, VOCAB
from tests.support.tiny_model import SEQ

SAVED = OptimConfig(lr=1e-3, min_lr=1e-4, weight_decay=0.1, warmup_iters=0)
CHANGED = dataclasses.replace(SAVED, lr=2e-3, weight_decay=0.05)


CFG = ParallelConfig(distributed_optimizer=True)


def _engine(optim: OptimConfig):
    from chatbaker_megatron.training.engine import build_engine

    return build_engine(
        TINY,
        CFG,
        optim,
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        train_iters=10,
        global_batch_size=2,
    )


def save_then_resume_on_ranks(root: str, schedule_from: str) -> dict:
    from chatbaker_megatron import parallel
    from chatbaker_megatron.checkpoint.load import resume_checkpoint
    from chatbaker_megatron.checkpoint.save import save_checkpoint
    from chatbaker_megatron.checkpoint.state import TrainState

    parallel.initialize(CFG, seed=1234)
    engine = _engine(SAVED)
    engine.scheduler.step(increment=6)  # 3 iterations of 2 samples
    state = TrainState(iteration=3, consumed_samples=6)
    save_checkpoint(root, engine, state, {"optim": dataclasses.asdict(SAVED)}, keep_last=2)
    resumed = _engine(CHANGED)
    resume_checkpoint(
        root,
        resumed,
        fallback=False,
        schedule_from=schedule_from,
        optim_config=dataclasses.asdict(CHANGED),
    )
    groups = resumed.optimizer.param_groups
    return {
        "scheduler_max_lr": resumed.scheduler.max_lr,
        "group_max_lr": {g["max_lr"] for g in groups},
        "weight_decay": resumed.scheduler.start_wd,
        "steps": resumed.scheduler.num_steps,
        "has_moments": all(
            resumed.optimizer.optimizer.state[p] for g in groups for p in g["params"]
        ),
    }


@pytest.mark.parametrize(
    ("schedule_from", "lr", "weight_decay"),
    [("config", CHANGED.lr, CHANGED.weight_decay), ("checkpoint", SAVED.lr, SAVED.weight_decay)],
)
def test_resume_with_a_changed_lr_and_weight_decay(
    ranks, tmp_path, caplog, schedule_from, lr, weight_decay
):
    results = ranks.run(2, save_then_resume_on_ranks, str(tmp_path / "ckpt"), schedule_from)
    for result in results:
        assert result["scheduler_max_lr"] == lr and result["group_max_lr"] == {lr}
        assert result["weight_decay"] == weight_decay
        assert result["steps"] == 6  # the schedule goes on from the saved step
        assert result["has_moments"]


def test_the_changed_settings_are_named_in_one_line():
    from chatbaker_megatron.checkpoint.resume_settings import changed_settings

    saved = {"optim": dataclasses.asdict(SAVED)}
    assert changed_settings(saved, dataclasses.asdict(CHANGED)) == [
        "optim.lr 0.001 -> 0.002",
        "optim.weight_decay 0.1 -> 0.05",
    ]
    assert changed_settings(saved, dataclasses.asdict(SAVED)) == []
