"""Optimizer and learning-rate schedule config: the `optim` Hydra group."""

from __future__ import annotations

from dataclasses import dataclass

LR_DECAY_STYLES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """Adam (megatron-core's optimizer: fp32 main params, grad clipping, ZeRO-1 when enabled)."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # global grad-norm clip; 0 disables clipping
    # Warmup: a fraction of the training iterations (warmup_ratio) or a count
    # (warmup_iters); set at most one of them.
    warmup_ratio: float | None = None
    warmup_iters: int | None = None
    decay_style: str = "cosine"
    # Iterations over which lr decays to min_lr; null = the whole run.
    decay_iters: int | None = None
    # fp16 only: the dynamic loss scale to start from (megatron's default;
    # it halves after overflowing steps, which are skipped).
    initial_loss_scale: float = 2.0**32
