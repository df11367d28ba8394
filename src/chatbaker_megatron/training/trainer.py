"""The training loop: pretraining and SFT share it; the data config decides which.

Per iteration: this DP rank's micro-batches of the global batch, one
`train_step` through megatron's schedules, the NaN policy, metrics every
`logging.log_interval`, validation every `train.eval_interval`, a checkpoint
every `checkpoint.save_interval`, and the exit conditions (budget reached,
`train.exit_interval`, `train.exit_duration_mins`, SIGTERM), each of which
saves a checkpoint before returning.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from chatbaker_megatron import parallel
from chatbaker_megatron.checkpoint.background import BackgroundSaves
from chatbaker_megatron.checkpoint.layout import iteration_dir, last_good, latest_checkpoint
from chatbaker_megatron.checkpoint.load import load_checkpoint, resume_checkpoint
from chatbaker_megatron.checkpoint.save import save_checkpoint
from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.schema import RunConfig, train_iters
from chatbaker_megatron.model.sizes import model_flops_per_token
from chatbaker_megatron.platform.preflight import run_preflight
from chatbaker_megatron.stop_signals import StopRequest
from chatbaker_megatron.training import faults
from chatbaker_megatron.training.batches import global_batch
from chatbaker_megatron.training.data import TrainingData, build_training_data
from chatbaker_megatron.training.engine import Engine, build_engine
from chatbaker_megatron.training.health import (
    ComputeTimer,
    SpikeDetector,
    StragglerDetector,
    gather_rank_times,
    step_time_figures,
)
from chatbaker_megatron.training.metrics import (
    MetricsLogger,
    ProgressClock,
    Throughput,
    progress_line,
)
from chatbaker_megatron.training.preference import (
    PreferenceTraining,
    build_preference_training,
)
from chatbaker_megatron.training.restarts import restart_event
from chatbaker_megatron.training.step import LANGUAGE_MODEL, eval_step, train_step
from chatbaker_megatron.training.watchdog import HangWatchdog, collective_trace_prefix

log = logging.getLogger(__name__)

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Training halted on a non-finite loss or gradient norm (after a checkpoint)."""


class LossSpikeError(RuntimeError):
    """Training halted after train.max_consecutive_skips loss spikes in a row (after a checkpoint)."""


class Trainer:
    def __init__(self, cfg: RunConfig, config_dict: dict[str, Any]) -> None:
        self.cfg = cfg
        self.config_dict = config_dict
        # First: a stop requested while the run starts up ends it after its first step.
        self.stop = StopRequest()
        self.ctx = parallel.initialize(
            cfg.parallel,
            seed=cfg.train.seed,
            timeout_minutes=cfg.cluster.distributed_timeout_minutes,
            trace_prefix=collective_trace_prefix(cfg.run_dir),
        )
        self.rank0 = self.ctx.rank == 0
        if cfg.cluster.preflight:  # before the model takes the GPU memory; skipped on CPU
            run_preflight(self.ctx.platform, slow_factor=cfg.cluster.preflight_slow_factor)
        self.total_iters = train_iters(cfg.train)
        self.data: TrainingData = build_training_data(cfg, total_iters=self.total_iters)
        self.engine: Engine = build_engine(
            cfg.model,
            cfg.parallel,
            cfg.optim,
            vocab_size=self.data.tokenizer.vocab_size,
            max_sequence_length=cfg.train.seq_length,
            train_iters=self.total_iters,
            global_batch_size=cfg.train.global_batch_size,
            params_dtype=PRECISION_DTYPES[cfg.cluster.precision],
            overlaps=cfg.parallel.overlaps(on_gpu=self.ctx.platform.is_cuda),
        )
        self.spikes = SpikeDetector(cfg.train.spike_factor, cfg.train.spike_warmup_iters)
        self.stragglers = StragglerDetector(
            cfg.train.straggler_factor, cfg.train.straggler_intervals
        )
        self.compute_timer = ComputeTimer(self.engine.chunks, self.ctx.platform)
        self.background = BackgroundSaves() if cfg.checkpoint.async_save else None
        self.watchdog = HangWatchdog(
            cfg.run_dir,
            self.ctx.rank,
            timeout_s=cfg.train.hang_timeout_s,
            startup_timeout_s=cfg.train.hang_startup_timeout_s,
            extra_dump=lambda: self.ctx.platform.dump_collective_trace(
                f"{collective_trace_prefix(cfg.run_dir)}{self.ctx.rank}"
            ),
        )
        self.state = self._restore()
        # Preference tuning: the reference log-probs (a pre-pass of the loaded weights).
        self.preference: PreferenceTraining | None = None
        if cfg.data.kind == "preference":
            datasets = [d for d in (self.data.train, self.data.valid) if d is not None]
            self.preference = build_preference_training(
                cfg, datasets, self.engine, self.ctx, self.state.iteration
            )
        self.objective = self.preference.objective if self.preference else LANGUAGE_MODEL
        self.valid_figures: dict[str, float] = {}
        # Read before the metrics logger sets aside the rows this attempt re-runs.
        restart = restart_event(cfg.run_dir, self.state.iteration) if self.rank0 else None
        # After the restore: a refused resume leaves config.yaml and the metrics untouched.
        self.metrics = MetricsLogger(
            cfg.run_dir,
            enabled=self.rank0,
            tensorboard=cfg.logging.tensorboard,
            wandb_cfg=cfg.logging.wandb,
            config=config_dict,
            start_iteration=self.state.iteration,
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
        self.throughput = Throughput(
            tokens_per_step=cfg.train.global_batch_size * cfg.train.seq_length,
            flops_per_token=model_flops_per_token(
                cfg.model, cfg.train.seq_length, self.data.tokenizer.vocab_size
            ),
            world_size=self.ctx.world_size,
            peak_tflops=cfg.cluster.device.peak_tflops,
        )

    def _restore(self) -> TrainState:
        if self.cfg.checkpoint.auto_resume:
            resumed = resume_checkpoint(
                self.cfg.checkpoint_dir,
                self.engine,
                fallback=self.cfg.checkpoint.fallback,
                allow_unverified=self.cfg.checkpoint.allow_unverified,
                schedule_from=self.cfg.optim.resume_schedule,
                optim_config=self.config_dict.get("optim"),
            )
            if resumed is not None:
                return resumed
        if self.cfg.train.init_from:
            source = latest_checkpoint(self.cfg.train.init_from) or self.cfg.train.init_from
            return load_checkpoint(
                source,
                self.engine,
                weights_only=True,
                allow_unverified=self.cfg.checkpoint.allow_unverified,
            )
        return TrainState()

    def _micro_batches(self, dataset: Any, start: int) -> list[dict[str, torch.Tensor]]:
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

    def save(self, finite: bool = True, *, background: bool = False, final: bool = False) -> None:
        """`finite`: the last step's loss and grad norm were finite (pruning keeps the newest such).

        `background` (periodic saves): with checkpoint.async_save, return once the
        state is snapshotted and let `_publish_background_save` finish it later.
        `final`: the run reached its last iteration: checkpoint.final_format, not
        checkpoint.format (docs/training.md, "Checkpoint formats and sizes").
        """
        args = (self.cfg.checkpoint_dir, self.engine, self.state, self.config_dict)
        ck = self.cfg.checkpoint
        kwargs = {
            "keep_last": ck.keep_last,
            "finite": finite,
            "optimizer_format": ck.final_format if final else ck.format,
        }
        with self.watchdog.long_operation("a checkpoint save"), self.engine.params_in_sync():
            if self.background is None:
                save_checkpoint(*args, **kwargs)
            elif background:
                self.background.start(*args, **kwargs)
            else:
                self.background.wait()
                save_checkpoint(*args, **kwargs)

    def _publish_background_save(self, wait: bool) -> None:
        """Collective: publish the background checkpoint once every rank wrote it."""
        if self.background is None or self.background.in_flight is None:
            return
        if wait:
            with self.watchdog.long_operation("waiting for a background checkpoint"):
                self.background.wait()
        else:
            self.background.poll()

    def evaluate(self) -> float | None:
        if self.data.valid is None:
            return None
        gbs = self.cfg.train.global_batch_size
        losses, tokens, sums = 0.0, 0, [0.0] * (self.objective.report_size - 2)
        for _ in range(self.cfg.train.eval_iters):
            start = self.state.consumed_valid_samples
            result = eval_step(
                self.engine, self._micro_batches(self.data.valid, start), self.objective
            )
            self.watchdog.progress("after a validation step")
            self.state.consumed_valid_samples += gbs
            losses += result.loss * result.tokens
            tokens += result.tokens
            sums = [a + b for a, b in zip(sums, result.sums)]
        if self.preference is not None:
            self.valid_figures = self.preference.figures(tuple(sums), tokens, prefix="valid_")
        return losses / tokens if tokens else None

    def _record(self, result: Any, steps: int, seconds: float) -> dict[str, Any]:
        record = {
            "iteration": self.state.iteration,
            "consumed_samples": self.state.consumed_samples,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "lr": self.engine.optimizer.param_groups[0]["lr"],
            "loss_scale": float(self.engine.optimizer.get_loss_scale()),
            "skipped_steps": self.state.skipped_steps,
            "skipped_overflows": self.state.skipped_overflows,
            "skipped_spikes": self.state.skipped_spikes,
            "memory_gib": self.ctx.platform.memory_gib(),
        }
        record.update(self.throughput.figures(steps, seconds))
        return record

    def _handle_non_finite(self, result: Any, consecutive: int) -> int:
        """Apply train.nan_policy to a skipped update; returns the new consecutive count."""
        self.state.skipped_steps += 1
        consecutive += 1
        message = (
            f"iteration {self.state.iteration + 1}: non-finite loss {result.loss} or grad norm "
            f"{result.grad_norm}; update skipped ({self.state.skipped_steps} so far)"
        )
        if (
            self.cfg.train.nan_policy == "halt"
            or consecutive >= self.cfg.train.max_consecutive_skips
        ):
            root = self.cfg.checkpoint_dir
            halted = ""
            if not self._saved_at(self.state.iteration):
                self.save(finite=False)
                halted = f"; the state at the halt is saved as {iteration_dir(root, self.state.iteration)}"
            good = last_good(root)
            raise NonFiniteLossError(
                f"{message}. Halting (train.nan_policy={self.cfg.train.nan_policy}, "
                f"{consecutive} consecutive){halted}; the last finite checkpoint is "
                + (iteration_dir(root, good) if good is not None else "none (none was saved)")
            )
        log.warning(message)
        return consecutive

    def _count_overflow(self) -> None:
        """An fp16 update skipped by the loss scaler: counted apart from faults (megatron's
        skipped iterations), logged once; the metrics rows carry the count and the scale."""
        self.state.skipped_overflows += 1
        if self.rank0 and self.state.skipped_overflows == 1:
            log.info(
                "iteration %d: fp16 loss-scale overflow, update skipped while the scale "
                "backs off (counted as skipped_overflows in the metrics, not as a fault)",
                self.state.iteration + 1,
            )

    def _accept_loss(self, loss: float) -> bool:
        """train.spike_policy's verdict on a finite loss, before the update is applied."""
        return self.cfg.train.spike_policy == "off" or not self.spikes.is_spike(self.state, loss)

    def _handle_spike(self, result: Any, consecutive: int) -> int:
        """Count and log an update skipped as a loss spike; returns the new consecutive count."""
        self.state.skipped_spikes += 1
        consecutive += 1
        message = (
            f"iteration {self.state.iteration + 1}: loss {result.loss:.4f} exceeds "
            f"train.spike_factor={self.cfg.train.spike_factor:g} x its running mean "
            f"{self.state.loss_ema:.4f}; update skipped as a spike "
            f"({self.state.skipped_spikes} so far)"
        )
        if consecutive >= self.cfg.train.max_consecutive_skips:
            self.save()
            raise LossSpikeError(
                f"{message}. Halting: {consecutive} updates in a row skipped "
                f"(train.max_consecutive_skips={self.cfg.train.max_consecutive_skips}); the "
                f"weights before them are saved in {self.cfg.checkpoint_dir}"
            )
        if self.rank0:
            log.warning(message)
        return consecutive

    def _rank_step_times(self) -> dict[str, float | int]:
        """Every rank's compute time per step in this log interval; warns about stragglers."""
        times = gather_rank_times(self.compute_timer.window_mean(), self.ctx.platform)
        for rank, ratio in self.stragglers.observe(times):
            if self.rank0:
                log.warning(
                    "straggler: rank %d computes %.2f x as long per step as the median rank, "
                    "%d log intervals in a row (train.straggler_factor=%g)",
                    rank,
                    ratio,
                    self.cfg.train.straggler_intervals,
                    self.cfg.train.straggler_factor,
                )
        return step_time_figures(times)

    def run(self) -> TrainState:
        """Train to the budget or an exit condition, under the hang watchdog."""
        self.watchdog.start()
        try:
            return self._loop()
        finally:
            if self.background is not None:  # a writer still running here is from a failed run
                self.background.abort()
            self.watchdog.stop()

    def _loop(self) -> TrainState:
        cfg = self.cfg
        gbs = cfg.train.global_batch_size
        clock = ProgressClock(self.state.iteration, self.total_iters)
        started = time.monotonic()
        start_iteration = self.state.iteration
        consecutive_skips = 0
        finite = True  # the last step's loss and grad norm; recorded in each checkpoint
        if self.rank0:
            log.info(
                "training %s: iterations %d -> %d, world %d (tp %d, pp %d, vpp %s, dp %d), run dir %s",
                cfg.name,
                self.state.iteration,
                self.total_iters,
                self.ctx.world_size,
                cfg.parallel.tp,
                cfg.parallel.pp,
                cfg.parallel.vpp,
                self.ctx.dp,
                cfg.run_dir,
            )
        while self.state.iteration < self.total_iters:
            next_iteration = self.state.iteration + 1
            faults.before_step(cfg.train.fault_injection, next_iteration, self.ctx.rank)
            micro_batches = self._micro_batches(self.data.train, self.state.consumed_samples)
            self.compute_timer.start()
            result = train_step(
                self.engine,
                micro_batches,
                global_batch_size=gbs,
                accept_loss=self._accept_loss,
                loss_multiplier=faults.loss_multiplier(cfg.train.fault_injection, next_iteration),
                objective=self.objective,
            )
            self.compute_timer.stop()
            self.watchdog.progress()
            self._publish_background_save(wait=False)
            # A spike's loss is finite; an overflow is loss scaling at work.
            finite = result.update_successful or result.spike or result.overflow
            if result.update_successful:
                consecutive_skips = 0
                self.spikes.accept(self.state, result.loss)
            elif result.overflow:
                self._count_overflow()
            elif result.spike:
                consecutive_skips = self._handle_spike(result, consecutive_skips)
            else:
                consecutive_skips = self._handle_non_finite(result, consecutive_skips)
            self.state.iteration += 1
            self.state.consumed_samples += gbs
            it = self.state.iteration
            if it % cfg.logging.log_interval == 0 or it == self.total_iters:
                steps, seconds = clock.window(it)
                record = self._record(result, steps, seconds)
                record.update(self._rank_step_times())
                if self.preference is not None:
                    record.update(self.preference.figures(result.sums, result.tokens))
                self.metrics.log(record)
                if self.rank0:
                    log.info(progress_line(record, self.total_iters, clock.eta(it)))
            if cfg.train.eval_interval and (
                it % cfg.train.eval_interval == 0 or it == self.total_iters
            ):
                with self.engine.params_in_sync():
                    valid_loss = self.evaluate()
                if valid_loss is not None:
                    self.metrics.log(
                        {"iteration": it, "valid_loss": valid_loss, **self.valid_figures}
                    )
                    if self.rank0:
                        log.info("iter %d | validation loss %.4f", it, valid_loss)
            if cfg.checkpoint.save_interval and it % cfg.checkpoint.save_interval == 0:
                last = it == self.total_iters
                self.save(finite, background=not last, final=last)
            if self._should_exit(it - start_iteration, started, self.stop):
                break
        self._publish_background_save(wait=True)
        if cfg.checkpoint.save_on_exit and not self._saved_at(self.state.iteration):
            self.save(finite, final=self.state.iteration >= self.total_iters)
        self.metrics.close()
        return self.state

    def _saved_at(self, iteration: int) -> bool:
        """Whether `iteration` is checkpointed (a background save in flight is published first)."""
        self._publish_background_save(wait=True)
        return os.path.isdir(iteration_dir(self.cfg.checkpoint_dir, iteration))

    def _should_exit(self, steps_this_run: int, started: float, stop: StopRequest) -> bool:
        train = self.cfg.train
        reasons = []
        if train.exit_interval and steps_this_run >= train.exit_interval:
            reasons.append(f"train.exit_interval={train.exit_interval}")
        # One collective for both: whether any rank got a signal, and the
        # longest elapsed time (ranks' clocks differ; all must agree to stop).
        signal_and_minutes = self.ctx.platform.tensor(
            [float(stop.requested()), (time.monotonic() - started) / 60.0]
        )
        dist.all_reduce(signal_and_minutes, op=dist.ReduceOp.MAX)
        any_signal, minutes = signal_and_minutes.tolist()
        if train.exit_duration_mins is not None and minutes >= train.exit_duration_mins:
            reasons.append(f"train.exit_duration_mins={train.exit_duration_mins}")
        if any_signal:
            reasons.append("a stop signal")
        if reasons and self.rank0:
            log.info("exiting at iteration %d on %s", self.state.iteration, " and ".join(reasons))
        return bool(reasons)


def train(cfg: RunConfig, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) training for a validated config on this process's rank."""
    try:
        state = Trainer(cfg, config_dict).run()
    finally:
        parallel.destroy_model_parallel()
    return asdict(state)
