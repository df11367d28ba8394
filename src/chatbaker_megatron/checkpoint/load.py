"""Load a checkpoint saved at any topology into this rank's model (and optimizer).

Every load verifies the checkpoint against its manifest first (manifest.py),
so a missing, truncated or corrupted shard is named with the rank that
wrote it before megatron or torch read a byte of it. Resuming a run falls
back to the previous complete checkpoint when the newest fails
(`checkpoint.fallback`), setting the failed one aside as `iter_N.corrupt`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
)

from chatbaker_megatron.checkpoint.layout import (
    CheckpointError,
    iteration_dir,
    iterations,
    last_good,
    latest_checkpoint,
    set_aside,
    write_latest,
)
from chatbaker_megatron.checkpoint.manifest import (
    ManifestError,
    describe,
    read_manifest,
    verify,
)
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
    SFT: fresh optimizer, scheduler and data position). Collective.
    """
    problems = verify(path)
    if problems:
        raise CheckpointError(describe(path, problems))
    return _load_verified(path, parts, weights_only)


def _load_verified(path: str, parts: ModelAndOptimizer, weights_only: bool) -> TrainState:
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


def resume_checkpoint(root: str, parts: ModelAndOptimizer, *, fallback: bool) -> TrainState | None:
    """Resume from the checkpoint `latest` names; None when `root` has none. Collective.

    When it fails verification and `fallback` is set, the older complete
    checkpoints are tried newest first; each failed one is renamed to
    `<name>.corrupt` (so neither `latest` nor pruning count it again) and
    `latest` is pointed at the one loaded.
    """
    latest = latest_checkpoint(root)
    if latest is None:
        return None
    newest = int(os.path.basename(latest)[len("iter_") :])
    candidates = [latest] + [
        iteration_dir(root, i) for i in reversed(iterations(root)) if i < newest
    ]
    rank0 = dist.get_rank() == 0
    for index, path in enumerate(candidates):
        problems = verify(path)
        if not problems:
            if index > 0 and rank0:
                write_latest(root, os.path.basename(path))
            dist.barrier()
            _warn_if_not_finite(root, path)
            return _load_verified(path, parts, weights_only=False)
        message = describe(path, problems)
        following = candidates[index + 1] if index + 1 < len(candidates) else None
        if not fallback:
            hint = f" (checkpoint.fallback=true would resume from {following})" if following else ""
            raise CheckpointError(message + hint)
        if rank0:
            aside = set_aside(path)
            log.warning(
                "%s; set aside as %s; %s",
                message,
                os.path.basename(aside),
                f"falling back to {following} (checkpoint.fallback=true)"
                if following
                else "no older checkpoint to fall back to",
            )
        dist.barrier()
    raise CheckpointError(
        f"no checkpoint in {root} passed verification (the failed ones are set aside as "
        "iter_*.corrupt); remove them to start afresh, or fix the files"
    )


def _warn_if_not_finite(root: str, path: str) -> None:
    try:
        manifest = read_manifest(path)
    except ManifestError:
        return
    if manifest is not None and not manifest.finite and dist.get_rank() == 0:
        good = last_good(root)
        log.warning(
            "resuming from %s, saved after a non-finite loss or gradient norm; the last "
            "finite checkpoint is %s",
            path,
            iteration_dir(root, good) if good is not None else "none",
        )
