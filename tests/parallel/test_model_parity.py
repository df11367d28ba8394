"""The whole tiny model under TP/SP/PP/VPP/DP equals the single-rank run.

Same initial weights (loaded through model/sharding.py), same global batch,
fp32: the loss and every parameter's gradient of the first step, and the
losses, grad norms and weights after 3 optimizer steps with grad clipping,
must match the single-rank reference.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chatbaker_megatron import parallel, platform
from chatbaker_megatron.config.model import KernelsConfig, ModelConfig
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.model.sharding import full_state
from chatbaker_megatron.training.engine import build_engine
from chatbaker_megatron.training.step import train_step
from tests.support.tiny_model import SEQ, TINY_MODEL, VOCAB, micro_batches

GLOBAL_BATCH = 8
MICRO_BATCH = 2
STEPS = 3
# Low enough that clipping is active on every step (asserted below).
OPTIM = OptimConfig(lr=1e-3, min_lr=1e-4, clip_grad=0.3, warmup_iters=1)
# fp32 end to end; differences come only from summation order. Weights after
# Adam steps get a looser bound: Adam normalises each update to ~lr, so a
# 1e-8 grad difference on a near-zero grad can move a weight by a sizeable
# fraction of lr (2e-5 is 2% of one step at lr=1e-3).
LOSS_TOL = {"atol": 1e-6, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-7, "rtol": 1e-4}
WEIGHT_TOL = {"atol": 2e-5, "rtol": 0.0}


def step_batches(dp: int, dp_rank: int, plat: platform.Platform) -> list[dict[str, torch.Tensor]]:
    """This DP rank's micro-batches of the fixed global batch, on the compute device."""
    return [
        {key: plat.from_host(value) for key, value in batch.items()}
        for batch in micro_batches(MICRO_BATCH, dp, dp_rank, GLOBAL_BATCH)
    ]


def train(
    cfg: ParallelConfig,
    init: dict[str, torch.Tensor] | None,
    model: ModelConfig = TINY_MODEL,
    steps: int = STEPS,
) -> dict:
    """Run `steps` steps on this rank; return what every rank can compare."""
    ctx = parallel.initialize(cfg, seed=1234)
    engine = build_engine(
        model,
        cfg,
        OPTIM,
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        train_iters=STEPS,
        global_batch_size=GLOBAL_BATCH,
        full_state=init,
    )
    initial = full_state(engine.chunks) if init is None else None
    losses, norms, first_grads = [], [], None
    for step in range(steps):
        result = train_step(
            engine,
            step_batches(ctx.dp, ctx.dp_rank, ctx.platform),
            global_batch_size=GLOBAL_BATCH,
        )
        losses.append(result.loss)
        norms.append(result.grad_norm)
        if step == 0 and not cfg.distributed_optimizer:
            first_grads = full_state(engine.chunks, lambda p: p.main_grad)
    return {
        "initial": initial,
        "losses": losses,
        "grad_norms": norms,
        "first_grads": first_grads,
        "final": full_state(engine.chunks),
    }


@pytest.fixture(scope="module")
def reference(ranks):
    return ranks.run(1, train, ParallelConfig(), None)[0]


@pytest.fixture(scope="module")
def one_step(ranks, reference):
    """The reference's first step alone (same initial weights, same batch)."""
    return ranks.run(1, train, ParallelConfig(), reference["initial"], TINY_MODEL, 1)[0]


CASES = {
    "tp2": ParallelConfig(tp=2, micro_batch_size=MICRO_BATCH),
    "tp2_sp": ParallelConfig(tp=2, sp=True, micro_batch_size=MICRO_BATCH),
    "pp2_1f1b": ParallelConfig(pp=2, micro_batch_size=MICRO_BATCH),
    "pp2_vpp2": ParallelConfig(pp=2, vpp=2, micro_batch_size=MICRO_BATCH),
    "dp2": ParallelConfig(micro_batch_size=MICRO_BATCH),
    "dp2_distributed_optimizer": ParallelConfig(
        micro_batch_size=MICRO_BATCH, distributed_optimizer=True
    ),
}


# The fused Triton kernels (interpreted on CPU) in place of the torch ones, under TP2 + SP
# (sharded heads, sequence-parallel norms), for one step: its loss, gradients, grad norm and
# updated weights against the reference's first step. The kernels alone are checked against
# torch in tests/kernels; more steps or a single-rank case would add minutes of
# interpreting and no new path.
TRITON = dataclasses.replace(TINY_MODEL, kernels=KernelsConfig(attention="triton", norm="triton"))
KERNEL_CASES = {
    "tp2_sp_triton": (2, ParallelConfig(tp=2, sp=True, micro_batch_size=MICRO_BATCH)),
}


def assert_tensors_close(actual: dict, expected: dict, what: str, tol: dict) -> None:
    assert actual.keys() == expected.keys(), f"{what}: parameter names differ"
    for name, tensor in expected.items():
        torch.testing.assert_close(
            actual[name], tensor, **tol, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


def test_reference_clips_every_step(reference):
    assert all(norm > OPTIM.clip_grad for norm in reference["grad_norms"])
    assert reference["losses"][-1] < reference["losses"][0]


@pytest.mark.parametrize("case", CASES)
def test_matches_single_rank(ranks, reference, case):
    assert_matches(ranks.run(2, train, CASES[case], reference["initial"]), reference)


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_triton_kernels_match_torch_kernels(ranks, reference, one_step, case):
    world, cfg = KERNEL_CASES[case]
    assert_matches(ranks.run(world, train, cfg, reference["initial"], TRITON, 1), one_step)


def assert_matches(results: list[dict], reference: dict) -> None:
    for rank, result in enumerate(results):
        torch.testing.assert_close(
            result["losses"],
            reference["losses"],
            **LOSS_TOL,
            msg=lambda m, r=rank: f"rank {r} losses: {m}",
        )
        torch.testing.assert_close(
            result["grad_norms"],
            reference["grad_norms"],
            **LOSS_TOL,
            msg=lambda m, r=rank: f"rank {r} grad norms: {m}",
        )
        if result["first_grads"] is not None:
            assert_tensors_close(
                result["first_grads"], reference["first_grads"], f"rank {rank} grad", GRAD_TOL
            )
        assert_tensors_close(result["final"], reference["final"], f"rank {rank} weight", WEIGHT_TOL)
