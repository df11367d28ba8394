"""Write checkpoints atomically: a full training checkpoint, or model weights only.

Every rank writes into `iter_N.tmp/`; after a barrier rank 0 renames it to
`iter_N/` and then replaces `latest` (layout.write_latest). Leftover `.tmp`
directories of killed writes are removed at the next write. Both writers
go through `write_checkpoint`, so a checkpoint from `chatbaker import-hf`
has the layout and common state of one from training.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelSaveStrategyWrapper,
)

from chatbaker_megatron.checkpoint.layout import (
    iteration_dir,
    prune,
    remove_partial,
    write_latest,
)
from chatbaker_megatron.checkpoint.state import (
    OPTIMIZER_FORMAT,
    ModelAndOptimizer,
    TrainState,
    common_state,
    data_parallel_group,
    materialize_optimizer_state,
    model_state,
    optimizer_kind,
    rng_sharded_object,
)

log = logging.getLogger(__name__)


def _save_strategy() -> Any:
    """megatron's default writer, with each replicated tensor written by one DP rank only."""
    return FullyParallelSaveStrategyWrapper(
        get_default_save_sharded_strategy(), data_parallel_group()
    )


def write_checkpoint(
    root: str, iteration: int, sharded: dict[str, Any], keep_last: int | None
) -> str:
    """Write `sharded` as root/iter_N, point `latest` at it, keep the newest `keep_last`.

    Collective: every rank must call it. `keep_last=None` removes nothing.
    """
    final = iteration_dir(root, iteration)
    tmp = final + ".tmp"
    rank0 = dist.get_rank() == 0
    if rank0:
        os.makedirs(root, exist_ok=True)
        remove_partial(root)
        if os.path.isdir(final):  # re-saving the same iteration (e.g. exit right after a save)
            shutil.rmtree(final)
        os.makedirs(tmp)
    dist.barrier()
    dist_checkpointing.save(sharded, tmp, sharded_strategy=_save_strategy())
    dist.barrier()
    if rank0:
        os.replace(tmp, final)
        write_latest(root, os.path.basename(final))
        if keep_last is not None:
            prune(root, keep_last)
    dist.barrier()
    return final


def save_checkpoint(
    root: str,
    parts: ModelAndOptimizer,
    state: TrainState,
    config: dict[str, Any],
    keep_last: int,
) -> str:
    """Everything needed to resume this iteration bit-exactly, at any TP/PP/DP.

    Collective: every rank must call it.
    """
    # A seed checkpoint (0 iterations) has an optimizer without state yet.
    materialize_optimizer_state(parts)
    sharded = model_state(parts.chunks)
    sharded["optimizer"] = parts.optimizer.sharded_state_dict(sharded, metadata=OPTIMIZER_FORMAT)
    sharded["scheduler"] = parts.scheduler.state_dict()
    sharded |= common_state(config, state, optimizer_kind(parts))
    sharded["rng_state"] = rng_sharded_object()
    final = write_checkpoint(root, state.iteration, sharded, keep_last)
    log.info("saved checkpoint %s", final)
    return final


def save_weights(
    root: str,
    chunks: list[torch.nn.Module],
    config: dict[str, Any],
    extra_common: dict[str, Any] | None = None,
) -> str:
    """The model alone as iteration 0 (no optimizer, scheduler or RNG state).

    Training starts from it with `train.init_from`, which loads weights only.
    Collective: every rank must call it.
    """
    sharded = model_state(chunks)
    sharded |= common_state(config, TrainState(), optimizer_kind=None)
    sharded |= extra_common or {}
    return write_checkpoint(root, 0, sharded, keep_last=None)
