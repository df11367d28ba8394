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
import signal
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from chatbaker_megatron import parallel
from chatbaker_megatron.checkpoint.layout import iteration_dir, latest_checkpoint
from chatbaker_megatron.checkpoint.load import load_checkpoint
from chatbaker_megatron.checkpoint.save import save_checkpoint
from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.schema import RunConfig, train_iters
from chatbaker_megatron.model.sizes import model_flops_per_token
from chatbaker_megatron.training.batches import global_batch
from chatbaker_megatron.training.data import TrainingData, build_training_data
from chatbaker_megatron.training.engine import Engine, build_engine
from chatbaker_megatron.training.metrics import (
    MetricsLogger,
    ProgressClock,
    Throughput,
    progress_line,
)
from chatbaker_megatron.training.step import eval_step, train_step

log = logging.getLogger(__name__)

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Training halted on a non-finite loss or gradient norm (after a checkpoint)."""


class _StopSignal:
    """Turns SIGTERM/SIGUSR1 (SLURM's warning before a time limit) into a clean exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum


def checkpoint_dir(cfg: RunConfig) -> str:
    return cfg.checkpoint.dir or os.path.join(cfg.run_dir, "checkpoints")


class Trainer:
    def __init__(self, cfg: RunConfig, config_dict: dict[str, Any]) -> None:
        self.cfg = cfg
        self.config_dict = config_dict
        self.ctx = parallel.initialize(cfg.parallel, seed=cfg.train.seed)
        self.rank0 = self.ctx.rank == 0
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
            overlap_grad_reduce=self._overlap_grad_reduce(),
        )
        self.state = self._restore()
        self.metrics = MetricsLogger(
            cfg.run_dir,
            enabled=self.rank0,
            tensorboard=cfg.logging.tensorboard,
            wandb_cfg=cfg.logging.wandb,
            config=config_dict,
        )
        self.throughput = Throughput(
            tokens_per_step=cfg.train.global_batch_size * cfg.train.seq_length,
            flops_per_token=model_flops_per_token(
                cfg.model, cfg.train.seq_length, self.data.tokenizer.vocab_size
            ),
            world_size=self.ctx.world_size,
            peak_tflops=cfg.cluster.device.peak_tflops,
        )

    def _overlap_grad_reduce(self) -> bool:
        setting = self.cfg.parallel.overlap_grad_reduce
        return self.ctx.platform.is_cuda if setting is None else setting

    def _restore(self) -> TrainState:
        root = checkpoint_dir(self.cfg)
        latest = latest_checkpoint(root) if self.cfg.checkpoint.auto_resume else None
        if latest is not None:
            return load_checkpoint(latest, self.engine)
        if self.cfg.train.init_from:
            source = latest_checkpoint(self.cfg.train.init_from) or self.cfg.train.init_from
            return load_checkpoint(source, self.engine, weights_only=True)
        return TrainState()

    def _micro_batches(self, dataset: Any, start: int) -> list[dict[str, torch.Tensor]]:
        return global_batch(
            dataset,
            start=start,
            global_batch_size=self.cfg.train.global_batch_size,
            micro_batch_size=self.cfg.parallel.micro_batch_size,
            dp=self.ctx.dp,
            dp_rank=self.ctx.dp_rank,
            plat=self.ctx.platform,
        )

    def save(self) -> None:
        save_checkpoint(
            checkpoint_dir(self.cfg),
            self.engine,
            self.state,
            self.config_dict,
            keep_last=self.cfg.checkpoint.keep_last,
        )

    def evaluate(self) -> float | None:
        if self.data.valid is None:
            return None
        gbs = self.cfg.train.global_batch_size
        losses, tokens = 0.0, 0
        for _ in range(self.cfg.train.eval_iters):
            start = self.state.consumed_valid_samples
            result = eval_step(self.engine, self._micro_batches(self.data.valid, start))
            self.state.consumed_valid_samples += gbs
            losses += result.loss * result.tokens
            tokens += result.tokens
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
            self.save()
            raise NonFiniteLossError(
                f"{message}. Halting (train.nan_policy={self.cfg.train.nan_policy}, "
                f"{consecutive} consecutive); the last good state is saved in "
                f"{checkpoint_dir(self.cfg)}"
            )
        log.warning(message)
        return consecutive

    def run(self) -> TrainState:
        cfg = self.cfg
        gbs = cfg.train.global_batch_size
        clock = ProgressClock(self.state.iteration, self.total_iters)
        stop = _StopSignal()
        started = time.monotonic()
        start_iteration = self.state.iteration
        consecutive_skips = 0
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
            micro_batches = self._micro_batches(self.data.train, self.state.consumed_samples)
            result = train_step(self.engine, micro_batches, global_batch_size=gbs)
            if result.update_successful:
                consecutive_skips = 0
            else:
                consecutive_skips = self._handle_non_finite(result, consecutive_skips)
            self.state.iteration += 1
            self.state.consumed_samples += gbs
            it = self.state.iteration
            if it % cfg.logging.log_interval == 0 or it == self.total_iters:
                steps, seconds = clock.window(it)
                record = self._record(result, steps, seconds)
                self.metrics.log(record)
                if self.rank0:
                    log.info(progress_line(record, self.total_iters, clock.eta(it)))
            if cfg.train.eval_interval and (
                it % cfg.train.eval_interval == 0 or it == self.total_iters
            ):
                valid_loss = self.evaluate()
                if valid_loss is not None:
                    self.metrics.log({"iteration": it, "valid_loss": valid_loss})
                    if self.rank0:
                        log.info("iter %d | validation loss %.4f", it, valid_loss)
            if cfg.checkpoint.save_interval and it % cfg.checkpoint.save_interval == 0:
                self.save()
            if self._should_exit(it - start_iteration, started, stop):
                break
        if cfg.checkpoint.save_on_exit and not self._saved_at(self.state.iteration):
            self.save()
        self.metrics.close()
        return self.state

    def _saved_at(self, iteration: int) -> bool:
        return os.path.isdir(iteration_dir(checkpoint_dir(self.cfg), iteration))

    def _should_exit(self, steps_this_run: int, started: float, stop: _StopSignal) -> bool:
        train = self.cfg.train
        reasons = []
        if train.exit_interval and steps_this_run >= train.exit_interval:
            reasons.append(f"train.exit_interval={train.exit_interval}")
        # One collective for both: whether any rank got a signal, and the
        # longest elapsed time (ranks' clocks differ; all must agree to stop).
        signal_and_minutes = self.ctx.platform.tensor(
            [float(stop.received is not None), (time.monotonic() - started) / 60.0]
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
