"""One training (or evaluation) step through megatron-core's pipeline schedules.

A global batch arrives as a list of micro-batches (dicts of tensors, see
`training/batches.py`). megatron's forward-backward function runs them
through this rank's model chunks with whatever schedule the topology needs
(no pipelining, 1F1B, or interleaved 1F1B with virtual stages).

Loss: the sum of masked token losses over the whole global batch divided by
the number of unmasked tokens in it (megatron's calculate_per_token_loss),
so the result does not depend on how the batch is split over micro-batches
and data-parallel ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
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


def _loss_func(loss_mask: torch.Tensor, loss_multiplier: float, output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1) * loss_multiplier
    mask = loss_mask.float().reshape(-1)
    loss_sum = torch.sum(losses * mask)
    tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, tokens, {"lm loss": report}


def _packed(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], PackedSeqParams]:
    """[b, S] packed samples -> one [1, b*S] row in megatron's thd layout.

    Each sample's `cu_seqlens` [S+1] holds its boundaries padded by repeating S;
    shifted by the sample's offset and de-duplicated they give the row's.
    """
    b, s = batch["tokens"].shape
    offsets = torch.arange(b, dtype=torch.int32, device=batch["cu_seqlens"].device) * s
    cu_seqlens = torch.unique_consecutive((batch["cu_seqlens"] + offsets[:, None]).reshape(-1))
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    flat = {key: value.reshape(1, -1) for key, value in batch.items() if key != "cu_seqlens"}
    return flat, PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )


def _forward_step(data_iterator, model, loss_multiplier: float = 1.0):
    batch = next(data_iterator)
    packed = None
    if "cu_seqlens" in batch:
        batch, packed = _packed(batch)
    output = model(
        batch["tokens"],
        batch["position_ids"],
        None,
        labels=batch["labels"],
        packed_seq_params=packed,
    )
    return output, partial(_loss_func, batch["loss_mask"], loss_multiplier)


def _sequence_shape(micro_batches: list[dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(seq_length, micro_batch_size) of the activations passed between pipeline stages."""
    b, s = micro_batches[0]["tokens"].shape
    return (b * s, 1) if "cu_seqlens" in micro_batches[0] else (s, b)


def _global_loss(losses_reduced: list[dict], engine: Engine) -> tuple[float, int]:
    """Sum the last stage's (loss_sum, tokens) over micro-batches and DP; share with all ranks.

    The sums stay on the compute device; the one host sync is the final read.
    """
    totals = torch.zeros(2, dtype=torch.float64, device=platform.detect().device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for report in losses_reduced:
            totals += report["lm loss"].to(torch.float64)
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    # The last stage holds the numbers; every pipeline rank gets them.
    dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, tokens = totals.tolist()
    return (loss_sum / tokens if tokens else math.nan), int(tokens)


def _run_schedule(
    engine: Engine,
    micro_batches: list[dict[str, torch.Tensor]],
    forward_only: bool,
    loss_multiplier: float = 1.0,
) -> list[dict]:
    seq_length, micro_batch_size = _sequence_shape(micro_batches)
    # Every chunk (virtual stage) pulls the same micro-batches in order.
    iterators = [iter(micro_batches) for _ in engine.chunks]
    return get_forward_backward_func()(
        forward_step_func=partial(_forward_step, loss_multiplier=loss_multiplier),
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


def _optimizer_step(
    engine: Engine, loss: float, accept_loss: Callable[[float], bool]
) -> tuple[bool, float | None, bool]:
    """megatron's optimizer step, skipped when the loss or the grad norm is not finite
    or `accept_loss` refuses the loss (a spike); returns (applied, grad norm, spike).

    The parts of megatron's `step()` in its order, each once: prepare_grads
    (fp16: unscale the grads and update the loss scale; skip on inf/NaN),
    the global grad norm (one reduction, one host sync), then, only when the
    loss and the norm are finite and the loss is accepted, clipping by that
    norm and the update. The loss is the same on every rank, so all decide alike.
    """
    optimizer = engine.optimizer
    if optimizer.prepare_grads():
        return False, None, False
    grad_norm = float(optimizer.get_grad_norm())
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return False, grad_norm, False
    if not accept_loss(loss):
        return False, grad_norm, True
    _clip(optimizer, grad_norm)
    return bool(optimizer.step_with_ready_grads()), grad_norm, False


def train_step(
    engine: Engine,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    global_batch_size: int,
    accept_loss: Callable[[float], bool] = lambda loss: True,
    loss_multiplier: float = 1.0,
) -> StepResult:
    """Forward and backward over the global batch, then one optimizer and LR-schedule step.

    A non-finite loss or gradient norm, or a finite loss that `accept_loss`
    refuses (the spike policy), leaves the weights and the schedule untouched
    (`update_successful` False; `spike` tells which); the caller applies its
    policy. `loss_multiplier` scales the loss and so the gradients (fault
    injection of a spike).
    """
    for chunk in engine.chunks:
        chunk.train()
        chunk.zero_grad_buffer()
    engine.optimizer.zero_grad()
    losses_reduced = _run_schedule(
        engine, micro_batches, forward_only=False, loss_multiplier=loss_multiplier
    )
    loss, tokens = _global_loss(losses_reduced, engine)
    update_successful, grad_norm, spike = _optimizer_step(engine, loss, accept_loss)
    if update_successful:
        engine.scheduler.step(increment=global_batch_size)
    return StepResult(
        loss=loss,
        tokens=tokens,
        grad_norm=grad_norm,
        update_successful=update_successful,
        spike=spike,
    )


@torch.no_grad()
def eval_step(engine: Engine, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
    """Forward only: the per-token loss of these micro-batches."""
    for chunk in engine.chunks:
        chunk.eval()
    loss, tokens = _global_loss(_run_schedule(engine, micro_batches, forward_only=True), engine)
    return StepResult(loss=loss, tokens=tokens, grad_norm=None, update_successful=True)
