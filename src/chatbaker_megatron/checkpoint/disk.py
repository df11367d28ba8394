"""Room for the next checkpoint, and save failures said in one line.

The next checkpoint is about as big as the previous one (the same model and
optimizer), so its size is the estimate of the bytes a save needs. While it
is written the `checkpoint.keep_last` older ones are still there: they are
pruned only once it is complete, so keep_last=2 needs room for three.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from chatbaker_megatron.checkpoint.manifest import ManifestError, read_manifest

_ERRNO = re.compile(r"\[Errno (\d+)\]")
_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}
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
def worker_errors() -> Iterator[list[str]]:
    """The errors megatron's checkpoint writer logs while this block runs.

    Its write workers catch the OSError and pass on only its class
    (`error: <class 'OSError'>`); the log record is where the errno survives.
    """
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.ERROR)
    logger = logging.getLogger("megatron.core.dist_checkpointing")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@contextmanager
def worker_errors_to(path: str) -> Iterator[None]:
    """worker_errors for a background writer process: the messages go to `path`
    (created only if there is one), for the training process to read."""
    handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    handler.setLevel(logging.ERROR)
    logger = logging.getLogger("megatron.core.dist_checkpointing")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def take_worker_errors(path: str) -> list[str]:
    """What worker_errors_to wrote, if anything (the file is removed)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    os.remove(path)
    return lines


def os_errno(err: BaseException, logged: Sequence[str] = ()) -> int | None:
    """The errno behind a save failure: in the exception chain, torch's per-rank failures,
    or the text of the exception and of what the writer logged."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
        # torch's CheckpointException: {rank: (exception, traceback)}
        for failure in (getattr(current, "failures", None) or {}).values():
            if isinstance(failure, tuple) and failure and isinstance(failure[0], BaseException):
                stack.append(failure[0])
    for text in (str(err), *logged):
        match = _ERRNO.search(text)
        if match:
            return int(match.group(1))
    return None


def save_failure(
    tmp: str,
    err: BaseException,
    needed: int | None,
    logged: Sequence[str] = (),
) -> str:
    """One line for a failed save: the path, what went wrong, the bytes needed and free."""
    parent = os.path.dirname(tmp)
    free = free_bytes(parent) if os.path.isdir(parent) else None
    code = os_errno(err, logged)
    if code in _DISK_ERRORS:
        reason = f"{_DISK_ERRORS[code]} ({errno.errorcode[code]})"
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
    """Of the ranks' messages for one failed save, one that names a disk error if any does."""
    codes = tuple(f"({errno.errorcode[code]})" for code in _DISK_ERRORS)
    return next((e for e in errors if any(code in e for code in codes)), errors[0])
