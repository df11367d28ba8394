"""The training loop: pretraining, SFT and preference tuning share it; the data config decides which.

`Trainer.__init__` builds the components in order; `_loop` reads top to bottom:
per iteration one step on this rank's share of the next global batch, then
each component decides for itself what the iteration means to it: the health
monitor (NaN and spike policies, stragglers), the reporter (metrics every
`logging.log_interval`), the evaluator (`train.eval_interval`), the
checkpointer (`checkpoint.save_interval`, background saves), and the exit
conditions (`train.exit_interval`, `train.exit_duration_mins`, a stop signal).
At the budget or an exit the checkpointer saves before the loop returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from chatbaker_megatron import parallel
from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.config.train import TrainConfig
from chatbaker_megatron.platform import Platform
from chatbaker_megatron.platform.preflight import run_preflight
from chatbaker_megatron.stop_signals import StopRequest
from chatbaker_megatron.training import faults
from chatbaker_megatron.training.batches import global_batch
from chatbaker_megatron.training.checkpointer import Checkpointer
from chatbaker_megatron.training.data import build_training_data
from chatbaker_megatron.training.engine import build_run_engine
from chatbaker_megatron.training.evaluator import Evaluator
from chatbaker_megatron.training.health import HealthMonitor
from chatbaker_megatron.training.preference import PreferenceTraining, build_preference_training
from chatbaker_megatron.training.reporter import Reporter
from chatbaker_megatron.training.step import LANGUAGE_MODEL, Objective, StepResult, train_step
from chatbaker_megatron.training.watchdog import HangWatchdog, collective_trace_prefix

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: RunConfig, config_dict: dict[str, Any]) -> None:
        self.cfg = cfg
        # First: a stop requested while the run starts up ends it after its first step.
        self.stop = StopRequest()
        self.ctx = parallel.initialize(
            cfg.parallel,
            seed=cfg.train.seed,
            timeout_minutes=cfg.cluster.distributed_timeout_minutes,
            trace_prefix=collective_trace_prefix(cfg.run_dir),
        )
        if cfg.cluster.preflight:  # before the model takes the GPU memory; skipped on CPU
            run_preflight(self.ctx.platform, slow_factor=cfg.cluster.preflight_slow_factor)
        self.total_iters = cfg.train.iterations
        self.data = build_training_data(cfg, total_iters=self.total_iters)
        vocab_size = self.data.tokenizer.vocab_size
        self.engine = build_run_engine(cfg, vocab_size=vocab_size, on_gpu=self.ctx.platform.is_cuda)
        self.watchdog = self._watchdog()
        self.checkpointer = Checkpointer(
            cfg, config_dict, self.engine, self.watchdog, self.total_iters
        )
        self.state = self.checkpointer.restore()
        # After the restore: a preference run's reference pre-pass reads the starting weights.
        self.preference = self._preference()
        self.objective = self.preference.objective if self.preference else LANGUAGE_MODEL
        self.health = HealthMonitor(
            cfg.train,
            self.engine.chunks,
            self.ctx.platform,
            rank0=self.ctx.rank == 0,
            save_at_halt=self.checkpointer.save_at_halt,
        )
        self.reporter = Reporter(
            cfg,
            config_dict,
            ctx=self.ctx,
            engine=self.engine,
            health=self.health,
            preference=self.preference,
            vocab_size=vocab_size,
            start_iteration=self.state.iteration,
            total_iters=self.total_iters,
        )
        self.evaluator = Evaluator(
            cfg.train,
            self.data.valid,
            self._micro_batches,
            engine=self.engine,
            objective=self.objective,
            preference=self.preference,
            watchdog=self.watchdog,
            reporter=self.reporter,
            total_iters=self.total_iters,
        )
        self.exits = ExitConditions(
            cfg.train, self.stop, self.ctx.platform, self.state.iteration, rank0=self.ctx.rank == 0
        )
        self.step = faults.inject(cfg.train.fault_injection, self.ctx.rank, self._step)

    def _watchdog(self) -> HangWatchdog:
        run_dir, rank = self.cfg.run_dir, self.ctx.rank

        def dump_collective_trace() -> None:
            self.ctx.platform.dump_collective_trace(f"{collective_trace_prefix(run_dir)}{rank}")

        return HangWatchdog(
            run_dir,
            rank,
            timeout_s=self.cfg.train.hang_timeout_s,
            startup_timeout_s=self.cfg.train.hang_startup_timeout_s,
            extra_dump=dump_collective_trace,
        )

    def _preference(self) -> PreferenceTraining | None:
        """Preference tuning: the objective and the reference log-probs (collective)."""
        if self.cfg.data.kind != "preference":
            return None
        datasets = [d for d in (self.data.train, self.data.valid) if d is not None]
        return build_preference_training(
            self.cfg, datasets, self.engine, self.ctx, self.state.iteration
        )

    def _micro_batches(self, dataset: Any, start: int) -> list[dict[str, torch.Tensor]]:
        """This DP rank's micro-batches of the global batch at sample `start` of `dataset`."""
        batches = global_batch(
            dataset,
            start=start,
            global_batch_size=self.cfg.train.global_batch_size,
            micro_batch_size=self.cfg.parallel.micro_batch_size,
            dp=self.ctx.dp,
            dp_rank=self.ctx.dp_rank,
            plat=self.ctx.platform,
        )
        if self.preference is not None:
            self.preference.attach(batches)
        return batches

    def _step(self, state: TrainState, objective: Objective) -> StepResult:
        """One training step on the next global batch, timed for the straggler figures."""
        batches = self._micro_batches(self.data.train, state.consumed_samples)
        with self.health.timer:
            result = train_step(
                self.engine,
                batches,
                global_batch_size=self.cfg.train.global_batch_size,
                accept_loss=lambda loss: self.health.accept_loss(state, loss),
                objective=objective,
            )
        self.watchdog.progress()
        return result

    def run(self) -> TrainState:
        """Train to the budget or an exit condition, under the hang watchdog."""
        self.watchdog.start()
        try:
            return self._loop()
        finally:
            self.checkpointer.abort()  # a background writer still running here is from a failure
            self.watchdog.stop()

    def _loop(self) -> TrainState:
        state = self.state
        self._log_start()
        while state.iteration < self.total_iters:
            result = self.step(state, self.objective)
            self.health.after_step(state, result)
            state.iteration += 1
            state.consumed_samples += self.cfg.train.global_batch_size
            self.reporter.after_step(state, result)
            self.evaluator.after_step(state)
            self.checkpointer.after_step(state, result.finite)
            if self.exits.reached(state):
                break
        self.checkpointer.at_exit(state)
        self.reporter.close()
        return state

    def _log_start(self) -> None:
        if self.ctx.rank != 0:
            return
        par = self.cfg.parallel
        log.info(
            "training %s: iterations %d -> %d, world %d (tp %d, pp %d, vpp %s, dp %d), run dir %s",
            self.cfg.name,
            self.state.iteration,
            self.total_iters,
            self.ctx.world_size,
            par.tp,
            par.pp,
            par.vpp,
            self.ctx.dp,
            self.cfg.run_dir,
        )


class ExitConditions:
    """`train.exit_interval` steps of this process, `train.exit_duration_mins` of wall time, or
    a stop signal on any rank; all ranks agree (one collective per iteration)."""

    def __init__(
        self,
        train: TrainConfig,
        stop: StopRequest,
        plat: Platform,
        start_iteration: int,
        *,
        rank0: bool,
    ) -> None:
        self.train, self.stop, self.plat, self.rank0 = train, stop, plat, rank0
        self.start_iteration = start_iteration
        self._started = time.monotonic()

    def reached(self, state: TrainState) -> bool:
        """Collective: whether the run stops after the iteration `state` has recorded."""
        train = self.train
        reasons = []
        if train.exit_interval and state.iteration - self.start_iteration >= train.exit_interval:
            reasons.append(f"train.exit_interval={train.exit_interval}")
        # One collective for both: whether any rank got a signal, and the
        # longest elapsed time (ranks' clocks differ; all must agree to stop).
        signal_and_minutes = self.plat.tensor(
            [float(self.stop.requested()), (time.monotonic() - self._started) / 60.0]
        )
        dist.all_reduce(signal_and_minutes, op=dist.ReduceOp.MAX)
        any_signal, minutes = signal_and_minutes.tolist()
        if train.exit_duration_mins is not None and minutes >= train.exit_duration_mins:
            reasons.append(f"train.exit_duration_mins={train.exit_duration_mins}")
        if any_signal:
            reasons.append("a stop signal")
        if reasons and self.rank0:
            log.info("exiting at iteration %d on %s", state.iteration, " and ".join(reasons))
        return bool(reasons)


def train(cfg: RunConfig, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) training for a validated config on this process's rank."""
    try:
        state = Trainer(cfg, config_dict).run()
    finally:
        parallel.destroy_model_parallel()
    return asdict(state)
