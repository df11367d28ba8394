"""Model chunks wrapped for training, with megatron-core's optimizer and LR schedule.

`build_engine` turns configs into: this rank's model chunks (Float16Module
for bf16/fp16, then megatron DDP), a megatron optimizer (Adam with fp32
main params, grad clipping, the distributed optimizer when asked) and an
OptimizerParamScheduler. Everything parallel here is megatron-core's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from chatbaker_megatron import platform
from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import NO_OVERLAPS, Overlaps, ParallelConfig
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.model.llama import PRECISION_DTYPES, build_model


@dataclass
class Engine:
    chunks: list[DistributedDataParallel]
    optimizer: MegatronOptimizer
    scheduler: OptimizerParamScheduler
    overlaps: Overlaps = NO_OVERLAPS

    @contextmanager
    def params_in_sync(self) -> Iterator[None]:
        """The model's weights as the optimizer last left them, for a save or an evaluation.

        With the param all-gather overlapped, an update reaches the (16-bit) model
        weights only in the next forward's pre-hooks; megatron's trainer gathers
        them at once, and pauses the hooks, around saves and evaluations.
        """
        if not self.overlaps.param_gather:
            yield
            return
        for chunk in self.chunks:
            chunk.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            for chunk in self.chunks:
                chunk.enable_forward_pre_hook()


def _one_or_list(funcs: list) -> Any:
    return funcs if len(funcs) > 1 else funcs[0]


def _wire_schedule_hooks(
    config,
    chunks: list[DistributedDataParallel],
    optimizer: MegatronOptimizer,
    overlaps: Overlaps,
) -> None:
    """Tell megatron's schedules how to sync, finalize and scale grads for these chunks."""
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = _one_or_list([chunk.no_sync for chunk in chunks])
    if overlaps.grad_reduce:
        config.grad_sync_func = _one_or_list([chunk.start_grad_sync for chunk in chunks])
    if overlaps.param_gather:
        # Every pipeline stage starts its all-gathers together (align_param_gather).
        config.param_sync_func = _one_or_list([chunk.start_param_sync for chunk in chunks])


def build_engine(
    model: ModelConfig,
    parallel: ParallelConfig,
    optim: OptimConfig,
    *,
    vocab_size: int,
    max_sequence_length: int,
    train_iters: int,
    global_batch_size: int,
    params_dtype: torch.dtype = torch.float32,
    overlaps: Overlaps = NO_OVERLAPS,
    full_state: dict[str, torch.Tensor] | None = None,
) -> Engine:
    """Build everything a training step needs on this rank.

    `params_dtype` goes to the model's TransformerConfig (model/llama.py), whose
    bf16/fp16 flags then decide the Float16Module wrapper and the optimizer's
    mixed precision here. `full_state` (unsharded weights, see
    model/sharding.py) replaces the random initialisation before the optimizer
    copies the main params.
    """
    chunks = build_model(
        model,
        parallel,
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        params_dtype=params_dtype,
    )
    if full_state is not None:
        from chatbaker_megatron.model.sharding import load_full_state

        load_full_state(chunks, full_state)
    # build_model initialises on the host (TP-invariant weights); megatron's
    # DDP keeps params where they are unless the distributed optimizer
    # re-homes them, so the move to the compute device is ours.
    plat = platform.detect()
    chunks = [plat.to_device(chunk) for chunk in chunks]
    config = chunks[0].config
    # Per-token loss: every token of the global batch weighs the same, whatever
    # the micro-batch / DP split or the SFT loss mask (see training/step.py).
    config.calculate_per_token_loss = True
    if config.bf16 or config.fp16:
        # Casts the first stage's input and the last stage's output (megatron's rule).
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlaps.grad_reduce,
        overlap_param_gather=overlaps.param_gather,
        align_param_gather=overlaps.param_gather,
        use_distributed_optimizer=parallel.distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    chunks = [
        DistributedDataParallel(
            config=config,
            ddp_config=ddp_config,
            module=chunk,
            # Only the first chunk's grad reduce starts before the last backward;
            # the others overlap with later chunks' backward (megatron's rule).
            disable_bucketing=index > 0,
        )
        for index, chunk in enumerate(chunks)
    ]
    for chunk in chunks:
        chunk.broadcast_params()
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=optim.lr,
            min_lr=optim.min_lr,
            weight_decay=optim.weight_decay,
            adam_beta1=optim.adam_beta1,
            adam_beta2=optim.adam_beta2,
            adam_eps=optim.adam_eps,
            clip_grad=optim.clip_grad,
            bf16=config.bf16,
            fp16=config.fp16,
            initial_loss_scale=optim.initial_loss_scale,
            params_dtype=config.params_dtype,
            use_distributed_optimizer=parallel.distributed_optimizer,
        ),
        chunks,
    )
    _wire_schedule_hooks(config, chunks, optimizer, overlaps)
    # max(1, ...): a 0-iteration run (a seed checkpoint) still needs a valid schedule.
    decay_iters = max(1, optim.decay_iters or train_iters)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if optim.warmup_iterations(train_iters) else optim.lr,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        # The scheduler counts samples, as megatron's trainer does.
        lr_warmup_steps=optim.warmup_iterations(train_iters) * global_batch_size,
        lr_decay_steps=decay_iters * global_batch_size,
        lr_decay_style=optim.decay_style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=decay_iters * global_batch_size,
        wd_incr_style="constant",
    )
    return Engine(chunks=chunks, optimizer=optimizer, scheduler=scheduler, overlaps=overlaps)


def build_run_engine(cfg: RunConfig, *, vocab_size: int, on_gpu: bool) -> Engine:
    """`build_engine` for a training run: the trainer's and `--dry-run`'s one way to build it.

    `on_gpu` resolves the overlaps as on the run's devices (on by default on GPUs,
    `ParallelConfig.overlaps`); they decide DDP's bucketing and so the padding.
    """
    return build_engine(
        cfg.model,
        cfg.parallel,
        cfg.optim,
        vocab_size=vocab_size,
        max_sequence_length=cfg.train.seq_length,
        train_iters=cfg.train.iterations,
        global_batch_size=cfg.train.global_batch_size,
        params_dtype=PRECISION_DTYPES[cfg.cluster.precision],
        overlaps=cfg.parallel.overlaps(on_gpu=on_gpu),
    )
