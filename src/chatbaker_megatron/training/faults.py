"""Faults on purpose (`train.fault_injection`, off by default): drills for the resilience machinery.

A hang on one rank for the hang watchdog (training/watchdog.py), a loss spike
on every rank for the spike policy (training/health.py).
"""

from __future__ import annotations

import logging
import time

from chatbaker_megatron.config.train import FaultInjectionConfig

log = logging.getLogger(__name__)


def hang_forever(iteration: int, rank: int) -> None:
    """Block this rank for good, the way a stuck collective or a wedged GPU would."""
    log.warning(
        "fault injection: rank %d hangs before iteration %d (train.fault_injection)",
        rank,
        iteration,
    )
    while True:
        time.sleep(3600)


def before_step(faults: FaultInjectionConfig, iteration: int, rank: int) -> None:
    """Hang here when this rank and `iteration` (1-based, the step about to run) are chosen."""
    if faults.hang_at_iteration == iteration and faults.rank == rank:
        hang_forever(iteration, rank)


def loss_multiplier(faults: FaultInjectionConfig, iteration: int) -> float:
    """The factor on the loss of `iteration`: `spike_scale` at the injected spike, else 1."""
    if faults.spike_at_iteration == iteration:
        log.warning(
            "fault injection: loss x %g at iteration %d (train.fault_injection)",
            faults.spike_scale,
            iteration,
        )
        return faults.spike_scale
    return 1.0
