"""Run health after every step: the NaN and spike policies, fp16 overflows, straggling ranks.

- `HealthMonitor`: what the trainer asks after each step. A skipped update,
  non-finite or a spike, goes down one path (counted in TrainState, logged,
  and after `train.max_consecutive_skips` in a row, or at once with
  `train.nan_policy=halt`, a checkpoint through the checkpointer's callback
  and `NonFiniteLossError` / `LossSpikeError`); the two differ only in the
  data of their `SkipRule`. It owns the compute timer and the straggler
  figures of each log interval.
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

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.utils import get_model_config

from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.train import TrainConfig
from chatbaker_megatron.platform import Platform
from chatbaker_megatron.training.step import StepResult

log = logging.getLogger(__name__)

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

    def __enter__(self) -> ComputeTimer:
        """Time one training step."""
        self._start, self._end = self._plat.timestamp(), None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
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


class NonFiniteLossError(RuntimeError):
    """Training halted on a non-finite loss or gradient norm (after a checkpoint)."""


class LossSpikeError(RuntimeError):
    """Training halted after train.max_consecutive_skips loss spikes in a row (after a checkpoint)."""


@dataclass(frozen=True)
class SkipRule:
    """How one kind of skipped update is counted and ends the run."""

    counter: str  # the TrainState field counting it
    error: type[RuntimeError]  # raised when the run halts on it
    finite: bool  # whether the state saved at the halt had finite values
    halt_at_once: str | None = None  # the setting that halts at the first one, if set


# The checkpointer's save at a halt: (state, finite) -> where that state and the last finite one are.
SaveAtHalt = Callable[[TrainState, bool], str]


class HealthMonitor:
    """The step's outcome against the run's policies; the compute time per rank.

    `save_at_halt` is called before a halting error is raised, so a halt always
    leaves the state it stopped in on disk.
    """

    def __init__(
        self,
        train: TrainConfig,
        chunks: list[torch.nn.Module],
        plat: Platform,
        *,
        rank0: bool,
        save_at_halt: SaveAtHalt,
    ) -> None:
        self.train = train
        self.timer = ComputeTimer(chunks, plat)
        self.spikes = SpikeDetector(train.spike_factor, train.spike_warmup_iters)
        self.stragglers = StragglerDetector(train.straggler_factor, train.straggler_intervals)
        self._plat = plat
        self._rank0 = rank0
        self._save_at_halt = save_at_halt
        self._consecutive_skips = 0
        halt = "train.nan_policy=halt" if train.nan_policy == "halt" else None
        self._non_finite = SkipRule("skipped_steps", NonFiniteLossError, False, halt)
        self._spike = SkipRule("skipped_spikes", LossSpikeError, True)

    def accept_loss(self, state: TrainState, loss: float) -> bool:
        """train.spike_policy's verdict on a finite loss, before its update is applied."""
        return self.train.spike_policy == "off" or not self.spikes.is_spike(state, loss)

    def after_step(self, state: TrainState, result: StepResult) -> None:
        """Count the outcome of the step that `state` is about to record (iteration + 1)."""
        if result.update_successful:
            self._consecutive_skips = 0
            self.spikes.accept(state, result.loss)
        elif result.overflow:
            self._count_overflow(state)
        elif result.spike:
            self._skip(
                state,
                self._spike,
                f"loss {result.loss:.4f} exceeds train.spike_factor={self.train.spike_factor:g} "
                f"x its running mean {state.loss_ema:.4f}; update skipped as a spike",
            )
        else:
            self._skip(
                state,
                self._non_finite,
                f"non-finite loss {result.loss} or grad norm {result.grad_norm}; update skipped",
            )

    def _skip(self, state: TrainState, rule: SkipRule, what: str) -> None:
        """The one path of a skipped update: count, then log it or halt after a checkpoint."""
        count = getattr(state, rule.counter) + 1
        setattr(state, rule.counter, count)
        self._consecutive_skips += 1
        message = f"iteration {state.iteration + 1}: {what} ({count} so far)"
        limit = self.train.max_consecutive_skips
        if rule.halt_at_once is None and self._consecutive_skips < limit:
            if self._rank0:
                log.warning(message)
            return
        setting = rule.halt_at_once or f"train.max_consecutive_skips={limit}"
        raise rule.error(
            f"{message}. Halting ({setting}, updates skipped in a row: "
            f"{self._consecutive_skips}); {self._save_at_halt(state, rule.finite)}"
        )

    def _count_overflow(self, state: TrainState) -> None:
        """An fp16 update skipped by the loss scaler: counted apart from faults (megatron's
        skipped iterations), logged once; the metrics rows carry the count and the scale."""
        state.skipped_overflows += 1
        if self._rank0 and state.skipped_overflows == 1:
            log.info(
                "iteration %d: fp16 loss-scale overflow, update skipped while the scale "
                "backs off (counted as skipped_overflows in the metrics, not as a fault)",
                state.iteration + 1,
            )

    def rank_step_times(self) -> dict[str, float | int]:
        """Collective: every rank's compute time per step since the last call; warns about
        stragglers."""
        times = gather_rank_times(self.timer.window_mean(), self._plat)
        for rank, ratio in self.stragglers.observe(times):
            if self._rank0:
                log.warning(
                    "straggler: rank %d computes %.2f x as long per step as the median rank, "
                    "%d log intervals in a row (train.straggler_factor=%g)",
                    rank,
                    ratio,
                    self.train.straggler_intervals,
                    self.train.straggler_factor,
                )
        return step_time_figures(times)
