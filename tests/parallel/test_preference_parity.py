"""DPO training under TP+SP, PP (1F1B and interleaved) and DP equals the single-rank run.

The same initial weights, the same eight pairs (chosen and rejected packed in
one sequence each), fp32: the reference log-probs of the pre-pass, and the
loss, grad norm, rewards and log-probs of 3 steps, and the weights after
them must match one rank. RPO with label smoothing, so that every term of the
loss (and RPO's batch-wide token count, reduced over DP) is on the path.
The 2-rank topologies run in one task on one 2-rank pool; TP2 x PP2 x DP2
with the distributed optimizer in one task on 8 ranks (8 ranks on 2 cores
are slow: one run, and its pool closed after it).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chatbaker_megatron import parallel
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.data.datasets.preference import PreferenceDataset
from chatbaker_megatron.model.sharding import full_state
from chatbaker_megatron.training.batches import global_batch
from chatbaker_megatron.training.engine import build_engine
from chatbaker_megatron.training.preference import PreferenceTraining, reference_prepass
from chatbaker_megatron.training.preference_loss import figures
from chatbaker_megatron.training.step import train_step
from tests.parallel.harness import _reset_megatron_state
from tests.parallel.test_model_parity import LOSS_TOL, WEIGHT_TOL, assert_tensors_close
from tests.support.preference_pairs import PAIRS, ROW, random_store
from tests.support.tiny_model import TINY_MODEL, VOCAB

GLOBAL_BATCH = 8  # pairs
MICRO_BATCH = 2
STEPS = 3
OPTIM = OptimConfig(lr=1e-3, min_lr=1e-4, clip_grad=1.0, warmup_iters=1)
SETTINGS = SimpleNamespace(loss="rpo", beta=0.5, label_smoothing=0.1, rpo_alpha=0.5)
CASES = {
    "tp2_sp": ParallelConfig(tp=2, sp=True, micro_batch_size=MICRO_BATCH),
    "pp2_1f1b": ParallelConfig(pp=2, micro_batch_size=MICRO_BATCH),
    "pp2_vpp2": ParallelConfig(pp=2, vpp=2, micro_batch_size=MICRO_BATCH),
    "dp2_distributed_optimizer": ParallelConfig(
        micro_batch_size=MICRO_BATCH, distributed_optimizer=True
    ),
}
THREE_D = ParallelConfig(
    tp=2, sp=True, pp=2, micro_batch_size=MICRO_BATCH, distributed_optimizer=True
)


def train(cfg: ParallelConfig, init: dict[str, torch.Tensor] | None) -> dict:
    """Reference pre-pass then STEPS DPO steps on the same global batch, on this rank."""
    ctx = parallel.initialize(cfg, seed=1234)
    engine = build_engine(
        TINY_MODEL,
        cfg,
        OPTIM,
        vocab_size=VOCAB,
        max_sequence_length=ROW,
        train_iters=STEPS,
        global_batch_size=GLOBAL_BATCH,
        full_state=init,
    )
    initial = full_state(engine.chunks) if init is None else None
    dataset = PreferenceDataset(
        random_store(), np.arange(PAIRS), seq_length=ROW, pad_id=0, seed=1, epochs=1
    )
    shape = {"dp": ctx.dp, "dp_rank": ctx.dp_rank, "plat": ctx.platform}
    table = reference_prepass(
        engine, [dataset], global_batch_size=GLOBAL_BATCH, micro_batch_size=MICRO_BATCH, **shape
    )
    training = PreferenceTraining(SETTINGS, table, GLOBAL_BATCH)
    steps = []
    for _ in range(STEPS):
        batches = global_batch(
            dataset, start=0, global_batch_size=GLOBAL_BATCH, micro_batch_size=MICRO_BATCH, **shape
        )
        training.attach(batches)
        result = train_step(
            engine, batches, global_batch_size=GLOBAL_BATCH, objective=training.objective
        )
        steps.append([result.loss, result.grad_norm, *result.sums])
    return {
        "initial": initial,
        "reference": table.cpu(),
        "steps": steps,
        "figures": figures(tuple(steps[0][2:]), GLOBAL_BATCH),
        "final": full_state(engine.chunks),
    }


def train_topologies(cases: dict[str, ParallelConfig], init: dict[str, torch.Tensor]) -> dict:
    """Every topology in turn on this rank (one pool task for all of them)."""
    results = {}
    for name, cfg in cases.items():
        results[name] = train(cfg, init)
        _reset_megatron_state()
    return results


@pytest.fixture(scope="module")
def reference(ranks):
    return ranks.run(1, train, ParallelConfig(), None)[0]


def test_reference_starts_at_ln2_and_learns(reference):
    first, last = reference["steps"][0], reference["steps"][-1]
    # Policy == reference before the first update: every reward 0, DPO's loss ln 2
    # (label smoothing or not), plus RPO's alpha x the chosen replies' NLL per token.
    assert reference["figures"]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    nll = reference["figures"]["nll_chosen"]
    assert first[0] == pytest.approx(math.log(2) + SETTINGS.rpo_alpha * nll, abs=1e-6)
    assert nll == pytest.approx(math.log(VOCAB), rel=0.1)  # a fresh model: ~uniform
    assert last[0] < first[0]
    reward_accuracy = last[4] / GLOBAL_BATCH
    assert reward_accuracy > 0.5


def assert_matches_reference(results: list[dict], reference: dict, case: str) -> None:
    """Every rank's reference table, step figures and final weights equal one rank's."""
    for rank, result in enumerate(results):
        where = f"{case} rank {rank}"
        torch.testing.assert_close(
            result["reference"],
            reference["reference"],
            **LOSS_TOL,
            msg=lambda m, w=where: f"{w} reference log-probs: {m}",
        )
        torch.testing.assert_close(
            torch.tensor(result["steps"]),
            torch.tensor(reference["steps"]),
            atol=2e-5,
            rtol=1e-5,
            msg=lambda m, w=where: f"{w} loss, grad norm, rewards, log-probs: {m}",
        )
        assert_tensors_close(result["final"], reference["final"], where, WEIGHT_TOL)


def test_topologies_match_single_rank(ranks, reference):
    results = ranks.run(2, train_topologies, CASES, reference["initial"])
    for case in CASES:
        assert_matches_reference([by_case[case] for by_case in results], reference, case)


def test_tp2_pp2_dp2_matches_single_rank(ranks, reference):
    results = ranks.run(8, train, THREE_D, reference["initial"])
    ranks.close(8)
    assert_matches_reference(results, reference, "tp2_sp_pp2_dp2_distributed_optimizer")
