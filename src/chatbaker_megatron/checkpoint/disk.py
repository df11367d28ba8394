"""Room for the next checkpoint, and save failures said in one line (disk_errors.py
classifies them from the exception, and from what megatron's write workers returned).

The next checkpoint is about as big as the previous one (the same model and
optimizer), so its size is the estimate of the bytes a save needs. While it
is written the `checkpoint.keep_last` older ones are still there: they are
pruned only once it is complete, so keep_last=2 needs room for three.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

from chatbaker_megatron.checkpoint.manifest import ManifestError, read_manifest
from chatbaker_megatron.disk_errors import DISK_ERRNOS, describe, disk_errno

# Less free space than this after a failed write: the disk filled up, whatever the error says.
FULL_BELOW_BYTES = 16 * 2**20


def checkpoint_bytes(path: str) -> int:
    """A checkpoint's size: from its manifest, else by listing its files."""
    try:
        manifest = read_manifest(path)
    except ManifestError:
        manifest = None
    if manifest is not None:
        return manifest.total_bytes
    return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())


def free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


def room_problem(root: str, previous: str | None) -> str | None:
    """Why the next checkpoint will not fit next to the kept ones, or None."""
    if previous is None:
        return None
    needed, free = checkpoint_bytes(previous), free_bytes(root)
    if free >= needed:
        return None
    return (
        f"not enough space to save a checkpoint in {root}: {free:,} bytes free, about "
        f"{needed:,} needed (the size of {os.path.basename(previous)}); free space or lower "
        "checkpoint.keep_last (the kept checkpoints stay until a new one is complete)"
    )


@contextmanager
def write_failures() -> Iterator[list[BaseException]]:
    """The exceptions megatron's checkpoint write workers returned while this block runs.

    A worker returns `(index, results)`, or `(index, exception)` when its write
    failed; megatron asserts on the latter and passes on a RuntimeError that
    names only the exception's class (`error: <class 'OSError'>`), so the
    errno is taken from the worker's own result, by wrapping the worker for
    the block (the threads look it up on the class when they start).
    """
    failures: list[BaseException] = []
    worker = inspect.getattr_static(FileSystemWriterAsync, "write_preloaded_data")

    def recording(*args: Any, **kwargs: Any) -> Any:
        output = worker.__func__(*args, **kwargs)
        if output is not None and isinstance(output[1], BaseException):
            failures.append(output[1])
        return output

    FileSystemWriterAsync.write_preloaded_data = staticmethod(recording)
    try:
        yield failures
    finally:
        FileSystemWriterAsync.write_preloaded_data = worker


@contextmanager
def write_failures_to(path: str) -> Iterator[None]:
    """write_failures for a background writer process: the errnos of its failed writes
    go to `path` (created only if there is one), for the training process."""
    with write_failures() as failures:
        try:
            yield
        finally:
            if failures:
                with open(path, "w", encoding="utf-8") as f:
                    json.dump([getattr(failure, "errno", None) for failure in failures], f)


def take_write_failures(path: str) -> list[OSError]:
    """What write_failures_to left at `path` (the file is removed), as OSErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            codes = json.load(f)
    except OSError:
        return []
    os.remove(path)
    return [OSError(code, os.strerror(code)) for code in codes if code is not None]


def save_failure(
    tmp: str,
    err: BaseException,
    needed: int | None,
    failures: Sequence[BaseException] = (),
) -> str:
    """One line for a failed save: the path, what went wrong, the bytes needed and free.

    `failures`: what the write workers returned (write_failures).
    """
    parent = os.path.dirname(tmp)
    free = free_bytes(parent) if os.path.isdir(parent) else None
    code = disk_errno(err, *failures)
    if code is not None:
        reason = describe(code)
    elif _full(free, needed):
        # Not every full disk gives an errno: torch's zip writer says "unexpected pos",
        # megatron's coordinator `CheckpointException ... ranks:dict_keys([0])`.
        reason = f"the disk is full (ENOSPC; the writer said {type(err).__name__})"
    else:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first_line}"
    room = f"{free:,} bytes free" if free is not None else "free space unknown"
    need = f", about {needed:,} needed" if needed else ""
    return f"saving checkpoint {tmp} failed: {reason}; {room}{need}"


def _full(free: int | None, needed: int | None) -> bool:
    if free is None:
        return False
    return free < FULL_BELOW_BYTES or (needed is not None and free < needed)


def state_bytes(sharded: Any, world_size: int) -> int:
    """The bytes a first checkpoint will take, about: this rank's tensors x the ranks
    (the ranks hold shares of about one size; there is no earlier checkpoint to go by)."""
    if isinstance(sharded, dict):
        return sum(state_bytes(value, 1) for value in sharded.values()) * world_size
    if isinstance(sharded, list | tuple):
        return sum(state_bytes(value, 1) for value in sharded) * world_size
    data = getattr(sharded, "data", sharded)
    return data.numel() * data.element_size() * world_size if torch.is_tensor(data) else 0


def most_telling(errors: list[str]) -> str:
    """Of the ranks' messages for one failed save (save_failure's lines), one that names a
    disk error if any does."""
    codes = tuple(describe(code) for code in DISK_ERRNOS)
    return next((e for e in errors if any(code in e for code in codes)), errors[0])
