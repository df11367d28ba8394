"""Load a checkpoint saved at any topology into this rank's model (and optimizer)."""

from __future__ import annotations

import logging
from typing import Any

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
)

from chatbaker_megatron.checkpoint.layout import CheckpointError
from chatbaker_megatron.checkpoint.state import (
    OPTIMIZER_FORMAT,
    ModelAndOptimizer,
    TrainState,
    data_parallel_group,
    materialize_optimizer_state,
    model_state,
    optimizer_kind,
    read_common,
    restore_rng_state,
    rng_sharded_object,
    topology,
)
from chatbaker_megatron.model.sharding import unwrap

log = logging.getLogger(__name__)


def _load_strategy(path: str) -> Any:
    """megatron's default reader, each DP rank reading a share and exchanging the rest."""
    return FullyParallelLoadStrategyWrapper(
        get_default_load_sharded_strategy(path), data_parallel_group()
    )


def load_checkpoint(
    path: str, parts: ModelAndOptimizer, *, weights_only: bool = False
) -> TrainState:
    """Load a checkpoint saved at any topology into these chunks (and optimizer, scheduler).

    `weights_only` loads the model and nothing else (e.g. PLM weights for
    SFT: fresh optimizer, scheduler and data position).
    """
    common = read_common(path)
    sharded = model_state(parts.chunks)
    if weights_only:
        loaded = dist_checkpointing.load(sharded, path, sharded_strategy=_load_strategy(path))
    else:
        saved_kind = common.get("optimizer_kind")
        if saved_kind is None:
            raise CheckpointError(
                f"{path} holds model weights only (no optimizer state); "
                "start from it with train.init_from"
            )
        if saved_kind != optimizer_kind(parts):
            raise CheckpointError(
                f"{path} holds {saved_kind} optimizer state but this run uses "
                f"parallel.distributed_optimizer={saved_kind != 'distributed'}; resume with the "
                "same setting (any TP/PP/DP works), or start from the weights alone with "
                "train.init_from"
            )
        materialize_optimizer_state(parts)
        sharded["optimizer"] = parts.optimizer.sharded_state_dict(
            sharded, is_loading=True, metadata=OPTIMIZER_FORMAT
        )
        if common.get("topology") == topology():
            sharded["rng_state"] = rng_sharded_object()
        loaded = dist_checkpointing.load(sharded, path, sharded_strategy=_load_strategy(path))
    for i, chunk in enumerate(parts.chunks):
        unwrap(chunk).load_state_dict(loaded[f"model{i}"])
    if weights_only:
        # bf16/fp16: the optimizer's fp32 main params were copied from the random
        # init; without this the first step would overwrite the loaded weights.
        parts.optimizer.reload_model_params()
        log.info("loaded model weights from %s", path)
        return TrainState()
    parts.optimizer.load_state_dict(loaded["optimizer"])
    parts.scheduler.load_state_dict(common["scheduler"])
    if "rng_state" in loaded:
        restore_rng_state(loaded["rng_state"])
    state = TrainState(**common["train_state"])
    log.info(
        "resumed from %s at iteration %d (saved at %s, now %s)",
        path,
        state.iteration,
        common.get("topology"),
        topology(),
    )
    return state
