"""The planner's activation bytes equal what the real model saves for backward.

Each case builds the real megatron-core model (model/llama.py) at two depths
and counts, with `torch.autograd.graph.saved_tensors_hooks`, the distinct
storages autograd keeps from one forward (plan/measure.py). The difference
between the depths, per layer, is the layer's bytes; the rest is the
embedding and loss head. Both must equal plan/activations.py exactly (ratio
1.0), for TP1/TP2, SP on/off, recompute none/selective/full, fp32 and bf16.
The CPU model runs the reference torch RMSNorm, so the `torch` norm profile
is the one checked (the `fused` profile differs only in its norm terms).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.parallel import RECOMPUTE_MODES, ParallelConfig
from chatbaker_megatron.plan import activations as act
from chatbaker_megatron.plan.workload import Workload, chunk_params

MODEL = ModelConfig(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_query_groups=2,
    ffn_hidden_size=176,
    max_position_embeddings=64,
)
VOCAB, SEQ, MICRO = 250, 16, 2
DEPTHS = (2, 4)


def measure_saved(tp: int, sp: bool, bf16: bool) -> dict:
    """Saved bytes of one forward per (recompute, depth), and the depth-2 model's parameter count."""
    from megatron.core.transformer.module import Float16Module

    from chatbaker_megatron import parallel
    from chatbaker_megatron.model.llama import build_model
    from chatbaker_megatron.plan.measure import SavedTensorCounter

    par = ParallelConfig(tp=tp, sp=sp)
    parallel.initialize(par, seed=1)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (MICRO, SEQ), generator=gen)
    positions = torch.arange(SEQ).expand(MICRO, SEQ)
    saved, params = {}, None
    for recompute in RECOMPUTE_MODES:
        for depth in DEPTHS:
            model = dataclasses.replace(MODEL, num_layers=depth)
            layout = dataclasses.replace(par, recompute=recompute)
            chunk = build_model(model, layout, vocab_size=VOCAB, max_sequence_length=SEQ)[0]
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


CASES = {
    "tp1_fp32": (1, False, False),
    "tp1_bf16": (1, False, True),
    "tp2_fp32": (2, False, False),
    "tp2_sp_fp32": (2, True, False),
    "tp2_sp_bf16": (2, True, True),
}


@pytest.fixture(scope="module")
def measured(ranks):
    return {name: ranks.run(tp, measure_saved, tp, sp, bf16) for name, (tp, sp, bf16) in CASES.items()}


def predicted(tp: int, sp: bool, bf16: bool, recompute: str) -> tuple[int, int]:
    """(bytes per layer, bytes outside the layers) for one micro-batch on one GPU."""
    shape = act.Shape(
        seq_length=SEQ,
        micro_batch_size=MICRO,
        tp=tp,
        sp=sp,
        act_bytes=2 if bf16 else 4,
        params_fp32=not bf16,
        norm="torch",
    )
    work = Workload(MODEL, VOCAB, SEQ, MICRO, "bf16" if bf16 else "fp32", 0.0)
    outside = (
        act.chunk_terms(MODEL, shape, recompute)
        + act.embedding_terms(shape)
        + act.head_terms(MODEL, shape, work.padded_vocab(tp))
    )
    return act.layer_bytes(MODEL, shape, recompute), act.total(outside)


@pytest.mark.parametrize("recompute", RECOMPUTE_MODES)
@pytest.mark.parametrize("case", CASES)
def test_saved_bytes_match_prediction(measured, case, recompute):
    tp, sp, bf16 = CASES[case]
    per_rank = [result["saved"] for result in measured[case]]
    assert all(saved == per_rank[0] for saved in per_rank), "TP ranks save different bytes"
    saved = per_rank[0]
    shallow, deep = (saved[(recompute, depth)] for depth in DEPTHS)
    layer = (deep - shallow) // (DEPTHS[1] - DEPTHS[0])
    outside = shallow - DEPTHS[0] * layer
    want_layer, want_outside = predicted(tp, sp, bf16, recompute)
    assert (layer, outside) == (want_layer, want_outside), (
        f"measured/predicted per layer {layer / want_layer:.4f}, outside {outside / want_outside:.4f}"
    )


@pytest.mark.parametrize("case", ["tp1_fp32", "tp2_fp32"])
def test_parameter_count_matches_the_real_model(measured, case):
    tp = CASES[case][0]
    work = Workload(MODEL, VOCAB, SEQ, MICRO, "fp32", 0.0)
    want = chunk_params(work, ParallelConfig(tp=tp), rank=0, chunk=0)
    assert [result["params"] for result in measured[case]] == [want] * tp
