"""The planner's activation bytes equal what the real model saves for backward.

Each case builds the real megatron-core model (model/llama.py) at two depths
and counts, with `torch.autograd.graph.saved_tensors_hooks`, the distinct
storages autograd keeps from one forward (tests/support/counters.py,
tests/support/plan_validation.py).
The difference between the depths, per layer, is the layer's bytes; the rest
is the embedding and loss head. Both must equal plan/activations.py exactly
(ratio 1.0), for TP1/TP2, SP on/off, recompute none/selective/full, fp32 and
bf16. The CPU model runs the reference torch RMSNorm, so the `torch` norm
profile is the one checked (the `fused` profile differs only in its norm terms).
"""

from __future__ import annotations

import dataclasses

import pytest

from chatbaker_megatron.config.parallel import ParallelConfig, RecomputeMode
from chatbaker_megatron.plan.workload import Workload, chunk_params
from tests.support import plan_validation
from tests.support.tiny_model import SEQ, TINY_MODEL, VOCAB

CASES = plan_validation.ACTIVATION_CASES


@pytest.fixture(scope="module")
def measured(ranks):
    return {
        name: ranks.run(tp, plan_validation.measure_saved, tp, sp, bf16)
        for name, (tp, sp, bf16) in CASES.items()
    }


@pytest.mark.parametrize("recompute", RecomputeMode)
@pytest.mark.parametrize("case", CASES)
def test_saved_bytes_match_prediction(measured, case, recompute):
    per_rank = [result["saved"] for result in measured[case]]
    assert all(saved == per_rank[0] for saved in per_rank), "TP ranks save different bytes"
    layer, outside = plan_validation.split_saved(per_rank[0], recompute)
    want_layer, want_outside = plan_validation.predicted_saved(*CASES[case], recompute)
    assert (layer, outside) == (want_layer, want_outside), (
        f"measured/predicted per layer {layer / want_layer:.4f}, outside {outside / want_outside:.4f}"
    )


@pytest.mark.parametrize("case", ["tp1_fp32", "tp2_fp32"])
def test_parameter_count_matches_the_real_model(measured, case):
    tp = CASES[case][0]
    model = dataclasses.replace(TINY_MODEL, num_layers=plan_validation.DEPTHS[0])
    work = Workload(
        model,
        VOCAB,
        SEQ,
        plan_validation.MICRO,
        "fp32",
        0.0,
    )
    want = chunk_params(work, ParallelConfig(tp=tp), rank=0, chunk=0)
    assert [result["params"] for result in measured[case]] == [want] * tp
