"""Measured-vs-predicted checks of the planner on the real model, on CPU ranks.

The per-rank bodies (`measure_saved`, `measure_step`) run inside a
multi-rank harness (tests/parallel/harness.py) with megatron's process
groups not yet built; they return plain data. The `predicted_*` functions
give the planner's figures for the same case. Used by the tests
(tests/parallel/test_plan_validation_*.py), which assert equality, and by
benchmarks/plan_validation.py, which prints both and their ratio.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.module import Float16Module

from chatbaker_megatron import parallel
from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig, RecomputeMode
from chatbaker_megatron.model.llama import build_model
from chatbaker_megatron.plan import activations as act
from chatbaker_megatron.plan.comm import step_volume
from chatbaker_megatron.plan.workload import Workload
from chatbaker_megatron.training.engine import build_engine
from chatbaker_megatron.training.step import train_step
from tests.support.counters import CollectiveCounter, SavedTensorCounter, ScheduleRecorder
from tests.support.tiny_model import SEQ, TINY_MODEL, VOCAB, micro_batches

# One forward's micro-batch (activations); one training step's global batch (communication).
MICRO, GLOBAL_BATCH = 2, 8
# Activation depths: the difference between them, per layer, is one layer's bytes.
DEPTHS = (2, 4)
# Collective calls this small are the step's scalars (loss and token counts,
# grad norm, pipeline flags), which the planner does not model.
BOOKKEEPING_BYTES = 16

# name -> (tp, sp, bf16)
ACTIVATION_CASES = {
    "tp1_fp32": (1, False, False),
    "tp1_bf16": (1, False, True),
    "tp2_fp32": (2, False, False),
    "tp2_sp_fp32": (2, True, False),
    "tp2_sp_bf16": (2, True, True),
}

# name -> (world size, model, layout)
COMM_CASES = {
    "tp2": (2, TINY_MODEL, ParallelConfig(tp=2, micro_batch_size=2)),
    "tp2_sp": (2, TINY_MODEL, ParallelConfig(tp=2, sp=True, micro_batch_size=2)),
    "pp2": (2, TINY_MODEL, ParallelConfig(pp=2, micro_batch_size=2)),
    "pp2_vpp2": (2, TINY_MODEL, ParallelConfig(pp=2, vpp=2, micro_batch_size=2)),
    "dp2": (2, TINY_MODEL, ParallelConfig(micro_batch_size=2)),
    "dp2_zero1": (2, TINY_MODEL, ParallelConfig(micro_batch_size=2, distributed_optimizer=True)),
    "tp2_sp_pp2_vpp2_dp2_zero1": (
        8,
        TINY_MODEL,
        ParallelConfig(tp=2, sp=True, pp=2, vpp=2, micro_batch_size=2, distributed_optimizer=True),
    ),
    "pp4_vpp2_dp2": (
        8,
        dataclasses.replace(TINY_MODEL, num_layers=8),
        ParallelConfig(pp=4, vpp=2, micro_batch_size=1),
    ),
}


def measure_saved(tp: int, sp: bool, bf16: bool) -> dict[str, Any]:
    """Per rank: bytes saved for backward by one forward, per (recompute, depth).

    Also the depth-DEPTHS[0] model's parameter count on this rank.
    """
    par = ParallelConfig(tp=tp, sp=sp)
    plat = parallel.initialize(par, seed=1).platform
    tokens = torch.randint(0, VOCAB, (MICRO, SEQ), generator=torch.Generator().manual_seed(0))
    tokens = plat.from_host(tokens)
    positions = plat.from_host(torch.arange(SEQ).expand(MICRO, SEQ))
    saved, params = {}, 0
    for recompute in RecomputeMode:
        for depth in DEPTHS:
            model = dataclasses.replace(TINY_MODEL, num_layers=depth)
            layout = dataclasses.replace(par, recompute=recompute)
            chunk = build_model(model, layout, vocab_size=VOCAB, max_sequence_length=SEQ)[0]
            chunk = plat.to_device(chunk)
            if depth == DEPTHS[0]:
                params = sum(p.numel() for p in chunk.parameters())
            if bf16:  # as training/engine.py wraps it
                chunk.config.params_dtype, chunk.config.bf16 = torch.bfloat16, True
                chunk = Float16Module(chunk.config, chunk)
            counter = SavedTensorCounter(chunk.parameters())
            with counter.active():
                loss = chunk(tokens, positions, None, labels=tokens)
            saved[(recompute, depth)] = counter.total_bytes
            del loss
    return {"saved": saved, "params": params}


def split_saved(saved: dict, recompute: str) -> tuple[int, int]:
    """(bytes per layer, bytes outside the layers) from the two depths' totals."""
    shallow, deep = (saved[(recompute, depth)] for depth in DEPTHS)
    layer = (deep - shallow) // (DEPTHS[1] - DEPTHS[0])
    return layer, shallow - DEPTHS[0] * layer


def predicted_saved(tp: int, sp: bool, bf16: bool, recompute: str) -> tuple[int, int]:
    """The planner's (bytes per layer, bytes outside the layers) for one micro-batch.

    The CPU model runs the reference torch RMSNorm: the `torch` norm profile.
    """
    shape = act.Shape(
        seq_length=SEQ,
        micro_batch_size=MICRO,
        tp=tp,
        sp=sp,
        act_bytes=2 if bf16 else 4,
        params_fp32=not bf16,
        norm="torch",
    )
    work = Workload(TINY_MODEL, VOCAB, SEQ, MICRO, "bf16" if bf16 else "fp32", 0.0)
    outside = (
        act.chunk_terms(TINY_MODEL, shape, recompute)
        + act.embedding_terms(shape)
        + act.head_terms(TINY_MODEL, shape, work.padded_vocab(tp))
    )
    return act.layer_bytes(TINY_MODEL, shape, recompute), act.total(outside)


def measure_step(
    model: ModelConfig,
    par: ParallelConfig,
    global_batch: int = GLOBAL_BATCH,
    seq: int = SEQ,
    warmup_steps: int = 0,
) -> dict[str, Any]:
    """Per rank: the collectives and the pipeline schedule of one real training step.

    Collective bytes are grouped by process group (TP, DP; point-to-point is
    the pipeline's); calls over single-rank groups move nothing and are
    dropped, calls of <= BOOKKEEPING_BYTES are listed apart, and any other
    call lands in `unaccounted`. `warmup_steps` run first, uncounted (for
    timing the schedule without first-step allocations).
    """
    ctx = parallel.initialize(par, seed=1)
    engine = build_engine(
        model,
        par,
        OptimConfig(warmup_iters=0),
        vocab_size=VOCAB,
        max_sequence_length=seq,
        train_iters=warmup_steps + 1,
        global_batch_size=global_batch,
    )
    batches = [
        {key: ctx.platform.from_host(value) for key, value in batch.items()}
        for batch in micro_batches(
            par.micro_batch_size, ctx.dp, ctx.dp_rank, global_batch, seq, VOCAB
        )
    ]
    for _ in range(warmup_steps):
        train_step(engine, batches, global_batch_size=global_batch)
    counter, recorder = CollectiveCounter(), ScheduleRecorder()
    with counter.active(), recorder.active(engine.chunks):
        train_step(engine, batches, global_batch_size=global_batch)
    groups = {
        "tp": [ps.get_tensor_model_parallel_group()],
        "dp": [
            ps.get_data_parallel_group(),
            ps.get_data_parallel_group(with_context_parallel=True),
        ],
    }
    volume: dict[tuple[str, str], int] = {}
    bookkeeping, unaccounted = [], []
    for call in counter.calls:
        if call.nbytes <= BOOKKEEPING_BYTES:
            bookkeeping.append((call.op, call.nbytes))
            continue
        if call.op in ("send", "recv"):
            name = "pp"
        else:
            name = next((n for n, gs in groups.items() if any(call.group is g for g in gs)), None)
            if name is None:
                unaccounted.append((call.op, call.nbytes))
                continue
            if dist.get_world_size(call.group) == 1:
                continue
        volume[(name, call.op)] = volume.get((name, call.op), 0) + call.nbytes
    return {
        "volume": volume,
        "bookkeeping": bookkeeping,
        "unaccounted": unaccounted,
        "pp_rank": ctx.pp_rank,
        "tp_rank": ctx.tp_rank,
        "dp_rank": ctx.dp_rank,
        "dp": ctx.dp,
        "events": [dataclasses.astuple(e) for e in recorder.events],
    }


def predicted_volume(
    model: ModelConfig, par: ParallelConfig, dp: int, pp_rank: int
) -> dict[tuple[str, str], int]:
    work = Workload(model, VOCAB, SEQ, GLOBAL_BATCH, "fp32", 0.0)
    return {key: n for key, n in step_volume(work, par, dp, pp_rank).by_call.items() if n}


def pipeline_orders(results: list[dict[str, Any]]) -> list[list[tuple[str, int, int]]]:
    """The (kind, chunk, microbatch) order of each pipeline rank of the first replica."""
    replica = [r for r in results if r["tp_rank"] == 0 and r["dp_rank"] == 0]
    replica.sort(key=lambda r: r["pp_rank"])
    return [[(kind, chunk, mb) for kind, chunk, mb, _s, _e in r["events"]] for r in replica]
