"""Files replaced whole or not at all, and durably: the one home of the atomic write.

A file is written under a temporary name beside its target (same directory,
so same filesystem, so the rename is atomic), fsynced, renamed over the
target, and then the directory is fsynced so the rename itself survives a
power loss. A reader, or a crash at any moment, sees the old file or the new
one, never a part of one. Temporary names are `.<name>.tmp`: one writer per
file at a time (the callers' locks, or rank 0 alone, see to that). Where
several processes race to create a file once (`create_once`), each writes its
own `.<name>.<pid>.tmp` and the first hard link wins.

Imports nothing but the standard library: preprocessing (which never imports
torch or megatron) uses it as well as the checkpoint writer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TextIO


def _temp_path(path: str) -> str:
    """Where `path`'s new content is written before it replaces `path`."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp")


def _fsync_path(path: str) -> None:
    # O_RDONLY opens directories too; an fsync through any descriptor flushes the
    # file's pages, whoever wrote them.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(*moves: tuple[str, str]) -> None:
    """Rename each written (temp, target) pair over its target, in the given order.

    Every temp is fsynced before the first rename, and the targets'
    directories after the last: when the last target is a commit marker
    (an `.idx` after its `.bin`), a crash never leaves the marker naming
    data that is not on disk.
    """
    for temp, _ in moves:
        _fsync_path(temp)
    for temp, target in moves:
        os.replace(temp, target)
    for directory in dict.fromkeys(os.path.dirname(os.path.abspath(t)) for _, t in moves):
        _fsync_path(directory)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[TextIO]:
    """The temp file of `path`, open for writing text: published over `path` when the
    block ends, removed when anything fails (`path` stays as it was)."""
    temp = _temp_path(path)
    try:
        with open(temp, "w", encoding="utf-8") as f:
            yield f
        publish((temp, path))
    except BaseException:
        # Closing may have failed too (a full disk flushing the tail): the temp goes regardless.
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def create_once(path: str, text: str) -> bool:
    """Create `path` holding `text`, unless it exists: False when another writer was first.

    Several processes may race for `path` (the ranks of one job): each writes its
    own temp file and hard-links it to `path`, which fails if `path` exists. So
    `path` appears with its whole content or not at all; a reader that sees it
    never reads it half written (an O_EXCL create would show it empty first).
    """
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
    return True


def replace_file(path: str, text: str) -> None:
    """Write `path` whole or not at all (see the module docstring)."""
    with replacing(path) as f:
        f.write(text)
