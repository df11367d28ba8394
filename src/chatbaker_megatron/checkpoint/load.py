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
    LATEST,
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
from chatbaker_megatron.checkpoint.resume_settings import (
    load_optimizer_and_schedule,
    log_changes,
)
from chatbaker_megatron.checkpoint.state import (
    LEGACY_OPTIMIZER_FORMAT,
    OPTIMIZER_FORMATS,
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
    path: str,
    parts: ModelAndOptimizer,
    *,
    weights_only: bool = False,
    allow_unverified: bool = False,
) -> TrainState:
    """Load a checkpoint saved at any topology into these chunks (and optimizer, scheduler).

    `weights_only` loads the model and nothing else (e.g. PLM weights for
    SFT: fresh optimizer, scheduler and data position). A checkpoint without
    a manifest is refused unless `allow_unverified`. Collective.
    """
    problems = verify(path, allow_unverified)
    if problems:
        raise CheckpointError(describe(path, problems))
    return _load_verified(path, parts, weights_only)


def _load_verified(
    path: str,
    parts: ModelAndOptimizer,
    weights_only: bool,
    schedule_from: str = "checkpoint",
    optim_config: dict[str, Any] | None = None,
) -> TrainState:
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
        saved_format = common.get("optimizer_format", LEGACY_OPTIMIZER_FORMAT)
        _check_reshardable(path, saved_kind, saved_format, common.get("topology"))
        materialize_optimizer_state(parts)
        sharded["optimizer"] = parts.optimizer.sharded_state_dict(
            sharded, is_loading=True, metadata=OPTIMIZER_FORMATS[saved_format]
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
    load_optimizer_and_schedule(parts, loaded["optimizer"], common["scheduler"], schedule_from)
    if dist.get_rank() == 0:
        log_changes(common.get("config"), optim_config, schedule_from)
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


def _check_reshardable(path: str, kind: str, saved_format: str, saved: Any) -> None:
    """A dp_reshardable distributed-optimizer state loads only at the TP/PP/VPP that wrote it."""
    if kind != "distributed" or saved_format != "dp_reshardable":
        return
    here = topology()
    model_parallel = ("tp", "pp", "vpp")
    if saved is not None and any(saved.get(k) != here[k] for k in model_parallel):
        layout = lambda t: ", ".join(f"{k}={t.get(k)}" for k in model_parallel)  # noqa: E731
        raise CheckpointError(
            f"{path} holds its optimizer state in the dp_reshardable format, which loads "
            f"only at the layout that wrote it ({layout(saved)}; this run has {layout(here)}; "
            "any DP size works): resume at that layout, or start from its weights alone "
            "with train.init_from (a checkpoint.final_format=fully_reshardable save, written "
            "when a run reaches its last iteration, loads at any layout)"
        )


def _resume_candidates(root: str, fallback: bool) -> tuple[list[str], bool]:
    """The checkpoints to try, newest first: the one `latest` names, then the older ones;
    and whether `latest` named the first.

    A `latest` that is missing, unreadable or names no complete checkpoint
    (while complete ones exist) leads to the newest complete one instead;
    without `fallback` that is an error.
    """
    try:
        latest = latest_checkpoint(root)
        problem = None
    except CheckpointError as err:
        latest, problem = None, str(err)
    if latest is not None:
        newest = int(os.path.basename(latest)[len("iter_") :])
        older = [iteration_dir(root, i) for i in reversed(iterations(root)) if i < newest]
        return [latest, *older], True
    complete = (
        [iteration_dir(root, i) for i in reversed(iterations(root))] if os.path.isdir(root) else []
    )
    if problem is None and complete:
        problem = f"{os.path.join(root, LATEST)} is missing"
    if problem is None:
        return [], False
    aside = [n for n in os.listdir(root) if n.endswith(".corrupt")]
    if not complete and aside:
        raise CheckpointError(_none_passed(root))
    if not fallback and complete:
        raise CheckpointError(
            f"{problem} (checkpoint.fallback=true would resume from {complete[0]})"
        )
    if dist.get_rank() == 0:
        log.warning(
            "%s; %s",
            problem,
            f"resuming from the newest complete checkpoint, {complete[0]}"
            if complete
            else "no complete checkpoint there: starting afresh",
        )
    return complete, False


def _none_passed(root: str) -> str:
    return (
        f"no checkpoint in {root} passed verification (the failed ones are set aside as "
        "iter_*.corrupt); remove them to start afresh, or fix the files"
    )


def resume_checkpoint(
    root: str,
    parts: ModelAndOptimizer,
    *,
    fallback: bool,
    allow_unverified: bool = False,
    schedule_from: str = "checkpoint",
    optim_config: dict[str, Any] | None = None,
) -> TrainState | None:
    """Resume from the checkpoint `latest` names; None when `root` has none. Collective.

    When it fails verification and `fallback` is set, the older complete
    checkpoints are tried newest first; each failed one is renamed to
    `<name>.corrupt` (so neither `latest` nor pruning count it again) and
    `latest` is pointed at the one loaded. A checkpoint without a manifest
    fails verification unless `allow_unverified`. `schedule_from` and
    `optim_config` (the run's optim settings, to name what changed): see
    resume_settings.py.
    """
    candidates, named_first = _resume_candidates(root, fallback)
    if not candidates:
        return None
    rank0 = dist.get_rank() == 0
    for index, path in enumerate(candidates):
        problems = verify(path, allow_unverified)
        if not problems:
            if (index > 0 or not named_first) and rank0:
                write_latest(root, os.path.basename(path))
            dist.barrier()
            _warn_if_not_finite(root, path)
            return _load_verified(path, parts, False, schedule_from, optim_config)
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
    raise CheckpointError(_none_passed(root))


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
