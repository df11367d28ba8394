"""Faults on purpose (`train.fault_injection`, off by default): drills for the resilience machinery.

A hang on one rank for the hang watchdog (training/watchdog.py), a loss spike
on every rank for the spike policy (training/health.py). `inject` wraps the
trainer's step function only when a fault is configured, so an ordinary run
has no fault code on its path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.train import FaultInjectionConfig
from chatbaker_megatron.training.step import Objective, StepResult

log = logging.getLogger(__name__)

# The trainer's step: the next global batch of `state` (iteration + 1) under an objective.
StepFunction = Callable[[TrainState, Objective], StepResult]


def hang_forever(iteration: int, rank: int) -> None:
    """Block this rank for good, the way a stuck collective or a wedged GPU would."""
    log.warning(
        "fault injection: rank %d hangs before iteration %d (train.fault_injection)",
        rank,
        iteration,
    )
    while True:
        time.sleep(3600)


def scaled(objective: Objective, factor: float) -> Objective:
    """`objective` with its loss, its reported loss sum and so its gradients x `factor`."""

    def loss_func(batch: dict[str, torch.Tensor], output_tensor: torch.Tensor):
        loss_sum, count, reports = objective.loss_func(batch, output_tensor)
        report = reports["lm loss"]
        return loss_sum * factor, count, {"lm loss": torch.cat([report[:1] * factor, report[1:]])}

    return Objective(loss_func, objective.report_size)


def inject(faults: FaultInjectionConfig, rank: int, step: StepFunction) -> StepFunction:
    """`step` with the configured faults around it; `step` itself when none is configured.

    The hang blocks rank `faults.rank` before iteration `hang_at_iteration`
    (1-based, the step about to run); the spike multiplies every rank's loss
    at iteration `spike_at_iteration` by `spike_scale`.
    """
    if faults.hang_at_iteration is None and faults.spike_at_iteration is None:
        return step

    def step_with_faults(state: TrainState, objective: Objective) -> StepResult:
        iteration = state.iteration + 1
        if faults.hang_at_iteration == iteration and faults.rank == rank:
            hang_forever(iteration, rank)
        if faults.spike_at_iteration == iteration:
            log.warning(
                "fault injection: loss x %g at iteration %d (train.fault_injection)",
                faults.spike_scale,
                iteration,
            )
            objective = scaled(objective, faults.spike_scale)
        return step(state, objective)

    return step_with_faults
