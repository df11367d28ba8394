"""Write checkpoints atomically: a full training checkpoint, or model weights only.

Every rank writes into `iter_N.tmp/` (megatron fsyncs each file) and
checksums what it wrote; rank 0 writes the manifest of all of them
(manifest.py), renames the directory to `iter_N/` and then replaces
`latest` (layout.write_latest). Leftover `.tmp` directories of killed
writes are removed at the next write. Before writing, rank 0 checks that
the filesystem has room for another checkpoint the size of the previous
one; a failed write (a full disk, a read-only filesystem) removes its
`.tmp` and raises the same one-line CheckpointError on every rank, leaving
the earlier checkpoints and `latest` as they were. Both writers go through
`write_checkpoint`, so a checkpoint from `chatbaker import-hf` has the
layout and common state of one from training.
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
from torch.distributed.checkpoint import CheckpointException

from chatbaker_megatron.checkpoint.disk import (
    checkpoint_bytes,
    most_telling,
    room_problem,
    save_failure,
    state_bytes,
    take_write_failures,
    write_failures,
    write_failures_to,
)
from chatbaker_megatron.checkpoint.layout import (
    CheckpointError,
    iteration_dir,
    iterations,
    prune,
    remove_partial,
    write_latest,
)
from chatbaker_megatron.checkpoint.manifest import (
    BOOKKEEPING_PREFIX,
    FileRecord,
    Manifest,
    record_files,
    take_records,
    write_manifest,
    write_records,
)
from chatbaker_megatron.checkpoint.state import (
    LEGACY_OPTIMIZER_FORMAT,
    OPTIMIZER_FORMATS,
    ModelAndOptimizer,
    TrainState,
    common_state,
    data_parallel_group,
    materialize_optimizer_state,
    model_state,
    optimizer_kind,
    rng_sharded_object,
)
from chatbaker_megatron.platform.lifetime import die_with

log = logging.getLogger(__name__)

# megatron's own background writer (a forked process per rank), the one the
# CPU suite exercises. megatron logs once that it prefers nvidia-resiliency-ext's
# (a persistent writer process; docs/training.md says why not yet).
ASYNC_STRATEGY = "mcore"


def _save_strategy() -> Any:
    """megatron's default writer, with each replicated tensor written by one DP rank only."""
    return FullyParallelSaveStrategyWrapper(
        get_default_save_sharded_strategy(), data_parallel_group()
    )


def _agree(error: str | None) -> None:
    """Collective: every rank raises the first error any rank had, so none waits for the others."""
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, error)
    first = next((e for e in gathered if e), None)
    if first:
        raise CheckpointError(first)


def _prepare(root: str, final: str, tmp: str) -> str | None:
    """Rank 0: an empty `.tmp` directory with room beside it; the problem otherwise."""
    try:
        os.makedirs(root, exist_ok=True)
        remove_partial(root)
        if os.path.isdir(final):  # re-saving the same iteration (e.g. exit right after a save)
            shutil.rmtree(final)
        done = iterations(root)
        problem = room_problem(root, iteration_dir(root, done[-1]) if done else None)
        if problem is None:
            os.makedirs(tmp)
        return problem
    except OSError as err:
        return save_failure(tmp, err, _previous_bytes(root))


def _previous_bytes(root: str) -> int | None:
    done = iterations(root) if os.path.isdir(root) else []
    return checkpoint_bytes(iteration_dir(root, done[-1])) if done else None


def _publish(root: str, final: str, tmp: str, manifest: Manifest, keep_last: int | None) -> None:
    """Rank 0: the manifest, then the rename, then `latest`, then pruning (in that order)."""
    write_manifest(tmp, manifest)
    os.replace(tmp, final)
    write_latest(root, os.path.basename(final))
    if keep_last is not None:
        prune(root, keep_last)


def _begin(root: str, iteration: int) -> tuple[str, str]:
    """Collective: (final, tmp) directories of a new write, the `.tmp` one empty and with room."""
    final = iteration_dir(root, iteration)
    tmp = final + ".tmp"
    _agree(_prepare(root, final, tmp) if dist.get_rank() == 0 else None)
    return final, tmp


def _complete(
    root: str,
    final: str,
    tmp: str,
    manifest: Manifest,
    keep_last: int | None,
    error: str | None,
    known: dict[str, FileRecord] | None = None,
) -> None:
    """Collective, after every rank's files are written (or failed): publish or clean up.

    Every rank's records and errors are gathered in one collective, so a
    failure on some ranks only raises the same CheckpointError everywhere.
    `known`: this rank's files already checksummed (by a background writer).
    """
    rank = dist.get_rank()
    records = {}
    if error is None:
        try:
            records = record_files(tmp, rank, known)
        except OSError as err:
            error = save_failure(tmp, err, _previous_bytes(root))
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (error, records))
    errors = [e for e, _ in gathered if e]
    error = most_telling(errors) if errors else None
    if error is None and rank == 0:
        for _, rank_records in gathered:
            manifest.files.update(rank_records)
        try:
            _publish(root, final, tmp, manifest, keep_last)
        except OSError as err:
            error = save_failure(tmp, err, manifest.total_bytes)
    if error is not None and rank == 0 and os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    _agree(error)


def write_checkpoint(
    root: str,
    iteration: int,
    sharded: dict[str, Any],
    keep_last: int | None,
    *,
    finite: bool = True,
) -> str:
    """Write `sharded` as root/iter_N, point `latest` at it, keep the newest `keep_last`.

    `finite` records whether the saved state came from a finite step; the
    newest finite checkpoint is never pruned. Collective: every rank must
    call it. `keep_last=None` removes nothing.
    """
    final, tmp = _begin(root, iteration)
    error = None
    with write_failures() as failures:
        try:
            dist_checkpointing.save(sharded, tmp, sharded_strategy=_save_strategy())
        # megatron raises torch's CheckpointException (a BaseException) on every rank of a
        # failed write; the coordinator's names the failed ranks.
        except (Exception, CheckpointException) as err:
            log.debug("checkpoint write failed", exc_info=True)
            needed = _previous_bytes(root) or state_bytes(sharded, dist.get_world_size())
            error = save_failure(tmp, err, needed, failures)
    _complete(root, final, tmp, Manifest(iteration, finite), keep_last, error)
    return final


def start_background_write(
    root: str,
    iteration: int,
    sharded: dict[str, Any],
    keep_last: int | None,
    *,
    finite: bool = True,
) -> tuple[str, Any]:
    """Begin writing `sharded` as root/iter_N in a background process; (final dir, request).

    The request is megatron's AsyncRequest, to schedule on an AsyncCallsQueue
    (checkpoint/background.py). Its one finalize function runs megatron's
    own (the `.metadata` file) and then `_complete`, on every rank once every
    rank's writer has finished: `latest` moves only then, exactly as after a
    synchronous write. Collective: every rank must call it.
    """
    final, tmp = _begin(root, iteration)
    request = dist_checkpointing.save(
        sharded,
        tmp,
        sharded_strategy=_save_strategy(),
        async_sharded_save=True,
        async_strategy=ASYNC_STRATEGY,
    )
    rank = dist.get_rank()
    # The writer process also checksums what it wrote (no stall for that), and
    # keeps the errnos of its failed writes (disk.write_failures) for the message.
    records_file = os.path.join(tmp, f"{BOOKKEEPING_PREFIX}records.rank{rank}.json")
    errors_file = os.path.join(tmp, f"{BOOKKEEPING_PREFIX}writer-errors.rank{rank}.json")
    write = request.async_fn
    training_process = os.getpid()

    def write_and_checksum(*args: Any, **kwargs: Any) -> None:
        # A writer outliving a killed rank could still be writing when the
        # restarted rank saves this iteration again.
        die_with(training_process)
        with write_failures_to(errors_file):
            write(*args, **kwargs)
        write_records(records_file, record_files(tmp, rank))

    megatron_finalizers = list(request.finalize_fns)

    def finalize() -> None:
        error = None
        try:
            for finalizer in megatron_finalizers:
                finalizer()
        except (Exception, CheckpointException) as err:
            log.debug("background checkpoint write failed", exc_info=True)
            error = save_failure(tmp, err, _previous_bytes(root), take_write_failures(errors_file))
        # Neither bookkeeping file may stay in a published checkpoint.
        take_write_failures(errors_file)
        known = take_records(records_file)
        _complete(root, final, tmp, Manifest(iteration, finite), keep_last, error, known)

    return final, request._replace(
        async_fn=write_and_checksum if write is not None else None, finalize_fns=[finalize]
    )


def training_state(
    parts: ModelAndOptimizer,
    state: TrainState,
    config: dict[str, Any],
    optimizer_format: str = LEGACY_OPTIMIZER_FORMAT,
) -> dict[str, Any]:
    """The sharded state dict of everything needed to resume this iteration bit-exactly.

    `optimizer_format`: one of `OPTIMIZER_FORMATS` (checkpoint.format / final_format).
    """
    # A seed checkpoint (0 iterations) has an optimizer without state yet.
    materialize_optimizer_state(parts)
    sharded = model_state(parts.chunks)
    sharded["optimizer"] = parts.optimizer.sharded_state_dict(
        sharded, metadata=OPTIMIZER_FORMATS[optimizer_format]
    )
    sharded["scheduler"] = parts.scheduler.state_dict()
    sharded |= common_state(config, state, optimizer_kind(parts))
    sharded["optimizer_format"] = optimizer_format
    sharded["rng_state"] = rng_sharded_object()
    return sharded


def save_checkpoint(
    root: str,
    parts: ModelAndOptimizer,
    state: TrainState,
    config: dict[str, Any],
    keep_last: int,
    finite: bool = True,
    optimizer_format: str = LEGACY_OPTIMIZER_FORMAT,
) -> str:
    """Everything needed to resume this iteration bit-exactly, at any TP/PP/DP
    (`fully_reshardable`) or at any DP with the same TP/PP/VPP (`dp_reshardable`).

    `finite`: whether the step that led to this state had a finite loss and
    gradient norm. Collective: every rank must call it.
    """
    sharded = training_state(parts, state, config, optimizer_format)
    final = write_checkpoint(root, state.iteration, sharded, keep_last, finite=finite)
    log.info("saved checkpoint %s%s", final, "" if finite else " (marked non-finite)")
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
