"""A full, over-quota or read-only filesystem, told from the error itself.

One home for the checkpoint writer and preprocessing. The errno is taken from
the exception: anywhere in its chain (`__cause__`, `__context__`), and in the
per-rank failures of torch's CheckpointException (`failures`: {rank:
(exception, traceback)}), or from exceptions a writer returned as its result
(checkpoint/disk.py collects megatron's) — never from log or message text.
Imports nothing but the standard library: preprocessing uses it too.
"""

from __future__ import annotations

import errno
import os

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and every exception behind it, each once, nearest first."""
    seen: set[int] = set()
    found: list[BaseException] = []
    stack = [err]
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
        for failure in (getattr(current, "failures", None) or {}).values():
            if isinstance(failure, tuple) and failure and isinstance(failure[0], BaseException):
                stack.append(failure[0])
    return found


def disk_errno(*errors: BaseException) -> int | None:
    """The first of DISK_ERRNOS behind any of `errors`, or None."""
    for err in errors:
        for current in _chain(err):
            if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
                return current.errno
    return None


def describe(code: int) -> str:
    """E.g. "no space left on device (ENOSPC)"."""
    return f"{os.strerror(code).lower()} ({errno.errorcode[code]})"
