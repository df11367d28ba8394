"""The planner's communication volumes and pipeline bubble against real training steps.

One training step of the real engine per layout, on 2 and 8 gloo ranks, with
every torch.distributed call counted (tests/support/counters.py,
tests/support/plan_validation.py).
Per rank, the bytes each collective moves over the TP group, the DP group and
the pipeline's point-to-point links must equal plan/comm.py exactly. Calls
of at most 16 bytes (loss and token counts, grad norm, pipeline flags) are
bookkeeping and kept apart; nothing else may go unaccounted.

The schedule megatron ran (forward/backward order per pipeline rank,
recorded by wrapping its forward_step/backward_step), replayed with fixed
step costs, must idle exactly (p-1)/(v*m + p-1) of the time: a bubble of
(p-1)/(v*m) of the ideal step (Narayanan et al. 2021).
"""

from __future__ import annotations

import pytest

from tests.support import plan_validation
from tests.support.counters import replay_idle_fraction

CASES = plan_validation.COMM_CASES


@pytest.fixture(scope="module")
def measured(ranks):
    results = {
        name: ranks.run(world, plan_validation.measure_step, model, par)
        for name, (world, model, par) in CASES.items()
    }
    # No other test uses 8 ranks: free those processes now rather than at session end.
    ranks.close(8)
    return results


@pytest.mark.parametrize("case", CASES)
def test_volume_matches_prediction(measured, case):
    _world, model, par = CASES[case]
    for rank, result in enumerate(measured[case]):
        want = plan_validation.predicted_volume(model, par, result["dp"], result["pp_rank"])
        assert result["volume"] == want, f"rank {rank} (pp rank {result['pp_rank']})"
        assert result["unaccounted"] == [], f"rank {rank}: uncounted collectives"
        assert len(result["bookkeeping"]) <= 8, result["bookkeeping"]


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][2].pp > 1])
def test_schedule_bubble_is_narayanan(measured, case):
    _world, _model, par = CASES[case]
    orders = plan_validation.pipeline_orders(measured[case])
    p, v = par.pp, par.vpp or 1
    m = len(orders[0]) // (2 * v)
    idle = replay_idle_fraction(orders)
    assert idle == pytest.approx([(p - 1) / (v * m + p - 1)] * p, rel=1e-12)
