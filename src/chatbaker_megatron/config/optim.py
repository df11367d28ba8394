"""Optimizer and learning-rate schedule config: the `optim` Hydra group."""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.checks import Choice, ConfigError, bounded, check_values


class LRDecayStyle(Choice):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class ResumeSchedule(Choice):
    """optim.resume_schedule: whose settings win on resume (OptimConfig)."""

    config = "config"
    checkpoint = "checkpoint"


@dataclass
class OptimConfig:
    """Adam (megatron-core's optimizer: fp32 main params, grad clipping, ZeRO-1 when enabled)."""

    lr: float = bounded(1e-3, gt=0)
    min_lr: float = bounded(1e-4, ge=0)  # and <= lr
    weight_decay: float = bounded(0.1, ge=0)
    adam_beta1: float = bounded(0.9, ge=0, lt=1)
    adam_beta2: float = bounded(0.95, ge=0, lt=1)
    adam_eps: float = bounded(1e-8, gt=0)
    clip_grad: float = bounded(1.0, ge=0)  # global grad-norm clip; 0 disables clipping
    # Warmup: a fraction of the training iterations (warmup_ratio) or a count
    # (warmup_iters); set at most one of them.
    warmup_ratio: float | None = bounded(None, ge=0, lt=1)
    warmup_iters: int | None = bounded(20, ge=0)
    decay_style: LRDecayStyle = LRDecayStyle.cosine
    # Iterations over which lr decays to min_lr; null = the whole run.
    decay_iters: int | None = bounded(None, ge=1)
    # On resume, whose LR/WD schedule and optimizer hyperparameters win when they differ:
    # `config` (this run's optim.*, Megatron-LM's --override-opt_param-scheduler) or
    # `checkpoint` (the saved ones, --use-checkpoint-opt_param-scheduler).
    resume_schedule: ResumeSchedule = ResumeSchedule.config
    # fp16 only: the dynamic loss scale to start from (megatron's default;
    # it halves after overflowing steps, which are skipped).
    initial_loss_scale: float = bounded(2.0**32, ge=1)

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group."""
        check_values(self, "optim.")
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr={self.min_lr!r}: expected <= optim.lr={self.lr}")
        if self.warmup_ratio is not None and self.warmup_iters is not None:
            raise ConfigError(
                f"optim.warmup_ratio={self.warmup_ratio!r}: set at most one of optim.warmup_ratio "
                f"and optim.warmup_iters (={self.warmup_iters})"
            )

    def warmup_iterations(self, train_iters: int) -> int:
        """The warmup length in iterations, for a run of `train_iters`."""
        if self.warmup_ratio is not None:
            return round(self.warmup_ratio * train_iters)
        return self.warmup_iters or 0
