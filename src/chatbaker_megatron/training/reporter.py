"""The run's records as training goes: a metrics row and a progress line every
`logging.log_interval` iterations (and at the last), validation rows, and the
row of an in-job restart. Rank 0 writes (training/metrics.py); every rank
takes part in the per-rank step-time gather of each logged iteration.
"""

from __future__ import annotations

import logging
from typing import Any

from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.model.sizes import model_flops_per_token
from chatbaker_megatron.parallel import ParallelContext
from chatbaker_megatron.training.engine import Engine
from chatbaker_megatron.training.health import HealthMonitor
from chatbaker_megatron.training.metrics import (
    MetricsLogger,
    ProgressClock,
    Throughput,
    progress_line,
)
from chatbaker_megatron.training.preference import PreferenceTraining
from chatbaker_megatron.training.restarts import restart_event
from chatbaker_megatron.training.step import StepResult

log = logging.getLogger(__name__)


class Reporter:
    """Create it once the run has started at `start_iteration` (after the restore): a refused
    resume leaves config.yaml and the metrics untouched."""

    def __init__(
        self,
        cfg: RunConfig,
        config_dict: dict[str, Any],
        *,
        ctx: ParallelContext,
        engine: Engine,
        health: HealthMonitor,
        preference: PreferenceTraining | None,
        vocab_size: int,
        start_iteration: int,
        total_iters: int,
    ) -> None:
        self.interval = cfg.logging.log_interval
        self.total_iters = total_iters
        self.rank0 = ctx.rank == 0
        self.ctx, self.engine, self.health, self.preference = ctx, engine, health, preference
        # Read before the metrics logger sets aside the rows this attempt re-runs.
        restart = restart_event(cfg.run_dir, start_iteration) if self.rank0 else None
        self.metrics = MetricsLogger(
            cfg.run_dir,
            enabled=self.rank0,
            tensorboard=cfg.logging.tensorboard,
            wandb_cfg=cfg.logging.wandb,
            config=config_dict,
            start_iteration=start_iteration,
        )
        if restart is not None:
            self.metrics.log(restart)
            log.warning(
                "in-job restart %d: resumed from iteration %d, %d iterations lost (last logged %d)",
                restart["restarts"],
                restart["iteration"],
                restart["iterations_lost"],
                restart["last_iteration"],
            )
        self.clock = ProgressClock(start_iteration, total_iters)
        self.throughput = Throughput(
            tokens_per_step=cfg.train.global_batch_size * cfg.train.seq_length,
            flops_per_token=model_flops_per_token(cfg.model, cfg.train.seq_length, vocab_size),
            world_size=ctx.world_size,
            peak_tflops=cfg.cluster.device.peak_tflops,
        )

    def after_step(self, state: TrainState, result: StepResult) -> None:
        """Collective at a logged iteration: its metrics row and progress line."""
        it = state.iteration
        if it % self.interval and it != self.total_iters:
            return
        steps, seconds = self.clock.window(it)
        optimizer = self.engine.optimizer
        record = {
            "iteration": it,
            "consumed_samples": state.consumed_samples,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "lr": optimizer.param_groups[0]["lr"],
            "loss_scale": float(optimizer.get_loss_scale()),
            "skipped_steps": state.skipped_steps,
            "skipped_overflows": state.skipped_overflows,
            "skipped_spikes": state.skipped_spikes,
            "memory_gib": self.ctx.platform.memory_gib(),
            **self.throughput.figures(steps, seconds),
            **self.health.rank_step_times(),
        }
        if self.preference is not None:
            record.update(self.preference.figures(result.sums, result.tokens))
        self.metrics.log(record)
        if self.rank0:
            log.info(progress_line(record, self.total_iters, self.clock.eta(it)))

    def validation(self, iteration: int, loss: float, figures: dict[str, float]) -> None:
        """A validation run's row and line."""
        self.metrics.log({"iteration": iteration, "valid_loss": loss, **figures})
        if self.rank0:
            log.info("iter %d | validation loss %.4f", iteration, loss)

    def close(self) -> None:
        self.metrics.close()
