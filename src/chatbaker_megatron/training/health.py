"""Run health beside the NaN policy: loss spikes and straggling ranks.

- `SpikeDetector`: a step whose loss exceeds `train.spike_factor` x the
  running mean of the accepted losses (an EMA) is a spike; the trainer then
  skips its update (training/step.py decides before megatron's `step()`).
  A ratio rather than a z-score: it does not become hair-trigger when the
  loss is smooth, and a level shift that is real ends in
  `train.max_consecutive_skips` instead of a silent stall. Its state travels
  in the checkpoint's TrainState, so a resumed run judges steps as the
  uninterrupted one would.
- `ComputeTimer` + `StragglerDetector`: each rank's forward+backward time up
  to the data-parallel gradient sync (the part a slow GPU stretches; the wall
  time of a synchronous step is the same on every rank, since the fast ones
  wait for the slow one in that sync), gathered once per log interval; a rank
  above `train.straggler_factor` x the median for `train.straggler_intervals`
  intervals in a row is named in a warning.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.utils import get_model_config

from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.platform import Platform

# Weight of the newest loss in the running mean (a horizon of about 20 steps).
SPIKE_EMA_WEIGHT = 0.05


@dataclass
class SpikeDetector:
    factor: float
    warmup_iters: int

    def is_spike(self, state: TrainState, loss: float) -> bool:
        """Whether `loss` is a spike against the running mean kept in `state`."""
        return (
            state.loss_ema is not None
            and state.loss_ema_steps >= self.warmup_iters
            and loss > self.factor * state.loss_ema
        )

    def accept(self, state: TrainState, loss: float) -> None:
        """Fold the loss of an applied update into the running mean."""
        ema = state.loss_ema
        state.loss_ema = loss if ema is None else ema + SPIKE_EMA_WEIGHT * (loss - ema)
        state.loss_ema_steps += 1


class ComputeTimer:
    """This rank's device time per step from the step's start to megatron's gradient finalisation.

    Wraps the chunks' `finalize_model_grads_func` (called once per training
    step, after the last backward, before the data-parallel reduction
    completes) to mark the end.
    """

    def __init__(self, chunks: list[torch.nn.Module], plat: Platform) -> None:
        self._plat = plat
        self._start: Any = None
        self._end: Any = None
        self._seconds = 0.0
        self._steps = 0
        config = get_model_config(chunks[0])
        finalize = config.finalize_model_grads_func

        def timed_finalize(*args: Any, **kwargs: Any) -> Any:
            self._end = plat.timestamp()
            return finalize(*args, **kwargs)

        config.finalize_model_grads_func = timed_finalize

    def start(self) -> None:
        self._start, self._end = self._plat.timestamp(), None

    def stop(self) -> None:
        end = self._end if self._end is not None else self._plat.timestamp()
        self._seconds += self._plat.seconds_between(self._start, end)
        self._steps += 1

    def window_mean(self) -> float:
        """Mean seconds per step since the last call; starts a new window."""
        mean = self._seconds / self._steps if self._steps else 0.0
        self._seconds, self._steps = 0.0, 0
        return mean


def gather_rank_times(seconds: float, plat: Platform) -> list[float]:
    """Every rank's `seconds`, by global rank: one all_gather of one number per rank."""
    mine = plat.tensor([seconds], dtype=torch.float64)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return torch.cat(every).tolist()  # one host sync, not one per rank


def step_time_figures(times: list[float]) -> dict[str, float | int]:
    """The metrics row's per-rank compute time summary."""
    slowest = max(range(len(times)), key=times.__getitem__)
    return {
        "rank_step_time_min_s": min(times),
        "rank_step_time_median_s": statistics.median(times),
        "rank_step_time_max_s": times[slowest],
        "slowest_rank": slowest,
    }


@dataclass
class StragglerDetector:
    factor: float
    intervals: int
    _streaks: dict[int, int] = field(default_factory=dict)

    def observe(self, times: list[float]) -> list[tuple[int, float]]:
        """Feed one interval's per-rank times; (rank, times the median) for each straggler.

        A rank is reported once its streak of slow intervals reaches
        `intervals`, and again every `intervals` intervals while it lasts.
        """
        median = statistics.median(times)
        stragglers = []
        for rank, seconds in enumerate(times):
            if median > 0 and seconds > self.factor * median:
                self._streaks[rank] = self._streaks.get(rank, 0) + 1
                if self._streaks[rank] % self.intervals == 0:
                    stragglers.append((rank, seconds / median))
            else:
                self._streaks.pop(rank, None)
        return stragglers
