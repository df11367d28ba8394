"""Validation every `train.eval_interval` iterations and at the last: `train.eval_iters`
global batches of the held-out set, forward only, with the model's weights as the
optimizer last left them; the loss (and a preference run's figures) go to the records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.train import TrainConfig
from chatbaker_megatron.training.engine import Engine
from chatbaker_megatron.training.preference import PreferenceTraining
from chatbaker_megatron.training.reporter import Reporter
from chatbaker_megatron.training.step import Objective, eval_step
from chatbaker_megatron.training.watchdog import HangWatchdog

# (dataset, first sample) -> this rank's micro-batches of that global batch.
BatchReader = Callable[[Any, int], list[dict[str, torch.Tensor]]]


class Evaluator:
    def __init__(
        self,
        train: TrainConfig,
        dataset: Any | None,
        read: BatchReader,
        *,
        engine: Engine,
        objective: Objective,
        preference: PreferenceTraining | None,
        watchdog: HangWatchdog,
        reporter: Reporter,
        total_iters: int,
    ) -> None:
        self.train, self.dataset, self.read = train, dataset, read
        self.engine, self.objective, self.preference = engine, objective, preference
        self.watchdog, self.reporter = watchdog, reporter
        self.total_iters = total_iters

    def after_step(self, state: TrainState) -> None:
        """Collective: validate when the interval (or the last iteration) is reached."""
        interval, it = self.train.eval_interval, state.iteration
        if self.dataset is None or not interval or (it % interval and it != self.total_iters):
            return
        with self.engine.params_in_sync():
            loss, tokens, sums = self._validate(state)
        if tokens:
            figures = self.preference.figures(sums, tokens, "valid_") if self.preference else {}
            self.reporter.validation(it, loss / tokens, figures)

    def _validate(self, state: TrainState) -> tuple[float, int, tuple[float, ...]]:
        """(loss x tokens, tokens, the objective's further sums) over train.eval_iters batches."""
        loss, tokens, sums = 0.0, 0, (0.0,) * (self.objective.report_size - 2)
        for _ in range(self.train.eval_iters):
            batches = self.read(self.dataset, state.consumed_valid_samples)
            result = eval_step(self.engine, batches, self.objective)
            self.watchdog.progress("after a validation step")
            state.consumed_valid_samples += self.train.global_batch_size
            loss += result.loss * result.tokens
            tokens += result.tokens
            sums = tuple(a + b for a, b in zip(sums, result.sums, strict=True))
        return loss, tokens, sums
