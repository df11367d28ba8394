"""Run health without a launched run: the detectors, the one skip path, and fault injection."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.train import FaultInjectionConfig, TrainConfig
from chatbaker_megatron.platform import detect
from chatbaker_megatron.training import faults
from chatbaker_megatron.training.health import (
    HealthMonitor,
    LossSpikeError,
    NonFiniteLossError,
    SpikeDetector,
    StragglerDetector,
    step_time_figures,
)
from chatbaker_megatron.training.step import LANGUAGE_MODEL, StepResult


def test_spike_detector_needs_warmup_and_compares_with_the_running_mean():
    detector = SpikeDetector(factor=2.0, warmup_iters=3)
    state = TrainState()
    for loss in (5.0, 4.0, 3.0):
        assert not detector.is_spike(state, 100.0)  # still warming up
        detector.accept(state, loss)
    assert state.loss_ema_steps == 3
    mean = state.loss_ema
    assert 4.0 < mean < 5.0  # an EMA, weighted to the first losses
    assert not detector.is_spike(state, 1.99 * mean)
    assert detector.is_spike(state, 2.01 * mean)


def test_straggler_named_after_enough_slow_intervals_in_a_row():
    detector = StragglerDetector(factor=1.3, intervals=3)
    normal, slow = [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.5, 1.0]
    assert detector.observe(slow) == []
    assert detector.observe(slow) == []
    assert detector.observe(normal) == []  # the streak is broken
    assert detector.observe(slow) == []
    assert detector.observe(slow) == []
    assert detector.observe(slow) == [(2, 1.5)]
    assert detector.observe(slow) == []  # reported again after another 3
    assert detector.observe([1.0, 1.0, 1.25, 1.0]) == []  # within the factor


def test_step_time_figures_name_the_slowest_rank():
    figures = step_time_figures([0.2, 0.5, 0.1, 0.3])
    assert figures == {
        "rank_step_time_min_s": 0.1,
        "rank_step_time_median_s": 0.25,
        "rank_step_time_max_s": 0.5,
        "slowest_rank": 1,
    }


APPLIED = StepResult(2.0, 10, 1.0, update_successful=True)
NON_FINITE = StepResult(math.nan, 10, math.nan, update_successful=False)
SPIKE = StepResult(50.0, 10, 1.0, update_successful=False, spike=True)
OVERFLOW = StepResult(2.0, 10, None, update_successful=False, overflow=True)


class _Chunk(torch.nn.Module):
    """What the compute timer reads of a model chunk: megatron's config with its hook."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(finalize_model_grads_func=lambda *args, **kwargs: None)


def monitor(**train: object) -> tuple[HealthMonitor, list[tuple[int, bool]]]:
    """A HealthMonitor whose halting saves are recorded as (iteration, finite)."""
    saves: list[tuple[int, bool]] = []

    def save_at_halt(state: TrainState, finite: bool) -> str:
        saves.append((state.iteration, finite))
        return f"saved iter {state.iteration}"

    health = HealthMonitor(
        TrainConfig(**train), [_Chunk()], detect(), rank0=True, save_at_halt=save_at_halt
    )
    return health, saves


def feed(health: HealthMonitor, state: TrainState, results: list[StepResult]) -> None:
    """The loop's order: the health verdict, then the iteration is recorded."""
    for result in results:
        health.after_step(state, result)
        state.iteration += 1


def test_spikes_and_non_finite_steps_share_one_skip_count_and_halt_after_a_save():
    health, saves = monitor(max_consecutive_skips=3, spike_warmup_iters=1)
    state = TrainState()
    feed(health, state, [APPLIED, SPIKE, NON_FINITE, APPLIED, SPIKE, NON_FINITE])
    assert (state.skipped_spikes, state.skipped_steps) == (2, 2)
    assert saves == []  # an applied update ended the first streak at two
    with pytest.raises(NonFiniteLossError) as halted:
        feed(health, state, [NON_FINITE])
    assert saves == [(6, False)]  # the state before the step, marked non-finite
    message = str(halted.value)
    assert message.startswith("iteration 7: non-finite loss nan or grad norm nan; update skipped")
    assert (
        "(3 so far). Halting (train.max_consecutive_skips=3, updates skipped in a row: 3)"
        in message
    )
    assert message.endswith("; saved iter 6")


def test_a_run_of_spikes_halts_with_a_finite_checkpoint():
    health, saves = monitor(max_consecutive_skips=2, spike_warmup_iters=1)
    state = TrainState()
    feed(health, state, [APPLIED, SPIKE])
    with pytest.raises(LossSpikeError, match=r"update skipped as a spike \(2 so far\)"):
        feed(health, state, [SPIKE])
    assert saves == [(2, True)]
    assert state.loss_ema == APPLIED.loss  # only applied losses enter the running mean


def test_nan_policy_halt_stops_at_the_first_non_finite_step():
    health, saves = monitor(nan_policy="halt")
    with pytest.raises(
        NonFiniteLossError, match=r"Halting \(train.nan_policy=halt, updates skipped in a row: 1\)"
    ):
        feed(health, TrainState(), [NON_FINITE])
    assert saves == [(0, False)]


def test_fp16_overflows_are_counted_apart_and_never_halt():
    health, saves = monitor(max_consecutive_skips=1)
    state = TrainState()
    feed(health, state, [OVERFLOW] * 5)
    assert (state.skipped_overflows, state.skipped_steps, state.skipped_spikes) == (5, 0, 0)
    assert saves == []


def test_spike_policy_off_accepts_every_loss():
    state = TrainState(loss_ema=1.0, loss_ema_steps=100)
    assert not monitor()[0].accept_loss(state, 50.0)
    assert monitor(spike_policy="off")[0].accept_loss(state, 50.0)


def _language_model_step(state: TrainState, objective) -> float:
    """A stand-in for the trainer's step: the objective's loss sum on fixed token losses."""
    batch = {"loss_mask": torch.tensor([1.0, 1.0, 0.0])}
    loss_sum, tokens, report = objective.loss_func(batch, torch.tensor([1.0, 2.0, 4.0]))
    assert int(tokens) == 2 and report["lm loss"].tolist() == [float(loss_sum), 2.0]
    return float(loss_sum)


def test_fault_injection_is_a_wrapper_only_when_configured():
    assert faults.inject(FaultInjectionConfig(), 0, _language_model_step) is _language_model_step
    step = faults.inject(
        FaultInjectionConfig(spike_at_iteration=3, spike_scale=10.0), 0, _language_model_step
    )
    assert step is not _language_model_step
    losses = [step(TrainState(iteration=i), LANGUAGE_MODEL) for i in range(4)]
    assert losses == [3.0, 3.0, 30.0, 3.0]  # iteration 3 is the step after iteration 2
