"""One training (or evaluation) step through megatron-core's pipeline schedules.

A global batch arrives as a list of micro-batches (dicts of tensors, see
`training/batches.py`). megatron's forward-backward function runs them
through this rank's model chunks with whatever schedule the topology needs
(no pipelining, 1F1B, or interleaved 1F1B with virtual stages).

Loss: the sum of masked token losses over the whole global batch divided by
the number of unmasked tokens in it (megatron's calculate_per_token_loss),
so the result does not depend on how the batch is split over micro-batches
and data-parallel ranks.
An `Objective` swaps the loss function and adds sums to the report: preference
tuning (training/preference.py) counts pairs instead of tokens the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.optimizer.grad_scaler import DynamicGradScaler
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func

from chatbaker_megatron import platform
from chatbaker_megatron.training.engine import Engine


@dataclass(frozen=True)
class StepResult:
    loss: float  # per-token loss over the global batch (same on every rank)
    tokens: int  # unmasked tokens in the global batch
    grad_norm: float | None  # None for evaluation steps
    update_successful: bool
    spike: bool = False  # the update was skipped because `accept_loss` refused the loss
    # fp16: the update was skipped because the grads overflowed at a dynamic loss scale
    # above its floor; the scaler has backed off and the next steps retry (not a fault).
    overflow: bool = False
    # The objective's further sums over the global batch (e.g. DPO's rewards), in its order.
    sums: tuple[float, ...] = ()

    @property
    def finite(self) -> bool:
        """The loss and grad norm were finite: an applied update, a spike (a finite loss
        refused) or an fp16 overflow (loss scaling at work). Recorded in each checkpoint."""
        return self.update_successful or self.spike or self.overflow


def _loss_func(batch: dict[str, torch.Tensor], output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1)
    mask = batch["loss_mask"].float().reshape(-1)
    loss_sum = torch.sum(losses * mask)
    tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, tokens, {"lm loss": report}


def _packed(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], PackedSeqParams]:
    """[b, S] packed samples -> one [1, b*S] row in megatron's thd layout, with the row's
    boundaries and longest sequence as `collate` computed them on the host."""
    max_seqlen = int(batch["max_seqlen"])  # a host tensor: no device sync
    flat = {
        key: value.reshape(1, -1)
        for key, value in batch.items()
        if key not in ("cu_seqlens", "max_seqlen")
    }
    return flat, PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=batch["cu_seqlens"],
        cu_seqlens_kv=batch["cu_seqlens"],
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )


@dataclass(frozen=True)
class Objective:
    """What a step optimises: `loss_func(batch, per-token losses)` returns
    megatron's (loss sum, count, {"lm loss": report}); the report holds `report_size`
    sums: the loss sum, its count, then any further sums (StepResult.sums)."""

    loss_func: Callable = _loss_func
    report_size: int = 2


LANGUAGE_MODEL = Objective()


def _forward_step(data_iterator, model, objective=LANGUAGE_MODEL):
    batch = next(data_iterator)
    inputs, packed = _packed(batch) if "cu_seqlens" in batch else (batch, None)
    output = model(
        inputs["tokens"],
        inputs["position_ids"],
        None,
        labels=inputs["labels"],
        packed_seq_params=packed,
    )
    return output, partial(objective.loss_func, batch)


def _sequence_shape(micro_batches: list[dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(seq_length, micro_batch_size) of the activations passed between pipeline stages."""
    b, s = micro_batches[0]["tokens"].shape
    return (b * s, 1) if "cu_seqlens" in micro_batches[0] else (s, b)


def _global_loss(
    losses_reduced: list[dict], engine: Engine, report_size: int = 2
) -> tuple[float, int, tuple[float, ...]]:
    """Sum the last stage's (loss_sum, tokens, *further sums) over micro-batches and DP;
    share with all ranks.

    The sums stay on the compute device; the one host sync is the final read.
    """
    totals = torch.zeros(report_size, dtype=torch.float64, device=platform.detect().device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for report in losses_reduced:
            totals += report["lm loss"].to(torch.float64)
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    # The last stage holds the numbers; every pipeline rank gets them.
    dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, tokens, *sums = totals.tolist()
    return (loss_sum / tokens if tokens else math.nan), int(tokens), tuple(sums)


def _run_schedule(
    engine: Engine,
    micro_batches: list[dict[str, torch.Tensor]],
    forward_only: bool,
    objective: Objective = LANGUAGE_MODEL,
) -> list[dict]:
    seq_length, micro_batch_size = _sequence_shape(micro_batches)
    # Every chunk (virtual stage) pulls the same micro-batches in order.
    iterators = [iter(micro_batches) for _ in engine.chunks]
    return get_forward_backward_func()(
        forward_step_func=partial(_forward_step, objective=objective),
        data_iterator=iterators if len(iterators) > 1 else iterators[0],
        model=engine.chunks if len(engine.chunks) > 1 else engine.chunks[0],
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def _clip(optimizer: MegatronOptimizer, grad_norm: float) -> None:
    """megatron's clipping by an already reduced global norm (no second norm reduction)."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = inner.get_parameters()
        if inner.config.clip_grad > 0.0 and params:
            clip_grad_by_total_norm_fp32(
                params,
                max_norm=inner.config.clip_grad,
                total_norm=grad_norm,
                use_decoupled_grad=inner.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8,
            )


def _dynamic_scalers(optimizer: MegatronOptimizer) -> list[DynamicGradScaler]:
    inners = getattr(optimizer, "chained_optimizers", [optimizer])
    scalers = (getattr(inner, "grad_scaler", None) for inner in inners)
    return [scaler for scaler in scalers if isinstance(scaler, DynamicGradScaler)]


def _optimizer_step(
    engine: Engine, loss: float, tokens: int, accept_loss: Callable[[float], bool]
) -> StepResult:
    """megatron's optimizer step, skipped on a loss-scale overflow, when the loss or the
    grad norm is not finite, or when `accept_loss` refuses the loss (a spike).

    The parts of megatron's `step()` in its order, each once: prepare_grads
    (fp16: unscale the grads and update the loss scale; skip on inf/NaN),
    the global grad norm (one reduction, one host sync), then, only when the
    loss and the norm are finite and the loss is accepted, clipping by that
    norm and the update. The loss is the same on every rank, so all decide alike.
    """
    optimizer = engine.optimizer
    scalers = _dynamic_scalers(optimizer)
    scales_before = [scaler.scale for scaler in scalers]  # device tensors: no host sync
    if optimizer.prepare_grads():
        # fp16 starts at a loss scale meant to overflow (2^32) and backs off until the
        # grads fit: while a dynamic scale is above its floor, inf/NaN in the grads is
        # loss scaling at work (megatron's "skipped iteration"). A non-finite loss, or
        # inf/NaN at the floor or at a constant scale, is a real non-finite step.
        overflow = math.isfinite(loss) and any(
            bool(before > scaler.min_scale)
            for scaler, before in zip(scalers, scales_before, strict=True)
        )
        return StepResult(loss, tokens, None, update_successful=False, overflow=overflow)
    grad_norm = float(optimizer.get_grad_norm())
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return StepResult(loss, tokens, grad_norm, update_successful=False)
    if not accept_loss(loss):
        return StepResult(loss, tokens, grad_norm, update_successful=False, spike=True)
    _clip(optimizer, grad_norm)
    applied = bool(optimizer.step_with_ready_grads())
    return StepResult(loss, tokens, grad_norm, update_successful=applied)


def train_step(
    engine: Engine,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    global_batch_size: int,
    accept_loss: Callable[[float], bool] = lambda loss: True,
    objective: Objective = LANGUAGE_MODEL,
) -> StepResult:
    """Forward and backward over the global batch, then one optimizer and LR-schedule step.

    A loss-scale overflow, a non-finite loss or gradient norm, or a finite loss
    that `accept_loss` refuses (the spike policy), leaves the weights and the
    schedule untouched (`update_successful` False; `overflow` and `spike` tell
    which); the caller applies its policy.
    """
    for chunk in engine.chunks:
        chunk.train()
        chunk.zero_grad_buffer()
    engine.optimizer.zero_grad()
    losses_reduced = _run_schedule(engine, micro_batches, forward_only=False, objective=objective)
    loss, tokens, sums = _global_loss(losses_reduced, engine, objective.report_size)
    result = _optimizer_step(engine, loss, tokens, accept_loss)
    if result.update_successful:
        engine.scheduler.step(increment=global_batch_size)
    return dataclasses.replace(result, sums=sums)


@torch.no_grad()
def eval_step(
    engine: Engine,
    micro_batches: list[dict[str, torch.Tensor]],
    objective: Objective = LANGUAGE_MODEL,
) -> StepResult:
    """Forward only: the loss (per token, or per pair for preference objectives) of these
    micro-batches."""
    for chunk in engine.chunks:
        chunk.eval()
    reports = _run_schedule(engine, micro_batches, forward_only=True, objective=objective)
    loss, tokens, sums = _global_loss(reports, engine, objective.report_size)
    return StepResult(loss=loss, tokens=tokens, grad_norm=None, update_successful=True, sums=sums)
