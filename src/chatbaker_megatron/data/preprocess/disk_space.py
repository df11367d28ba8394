"""A full, over-quota or read-only output filesystem as one line: the path, the bytes needed, free space.

The error surfaces wherever a buffer happens to flush (a write, a close, the
index), often with no file name; preprocessing knows which output it was
writing and how far it got, so it can say how much room the whole output
needs: the bytes written so far scaled by the share of the input done.
"""

from __future__ import annotations

import os
import shutil

# Before any token is written the ratio is unknown: ~4 input bytes per token
# (English ~4 characters per token; Korean ~1.5 characters of 3 UTF-8 bytes).
INPUT_BYTES_PER_TOKEN = 4


class OutputDiskError(OSError):
    """The output cannot be written (disk_errors.DISK_ERRNOS); the message is the whole report."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)  # one argument: str() is the message, no "[Errno N]"
        self.errno = code


def estimate_output_bytes(
    *, written: int, input_done: int, input_total: int, itemsize: int, seqs_per_doc: int
) -> int:
    """Bytes the finished .bin + .idx will take, from what was written for `input_done` input bytes."""
    if written and input_done:
        return round(written * input_total / input_done)
    return input_total // INPUT_BYTES_PER_TOKEN * itemsize * seqs_per_doc


def _size(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"


def describe_disk_error(err: OSError, code: int, *, path: str, needed: int, progress: float) -> str:
    """One line: what failed (`code`, disk_errors.disk_errno of `err`) on which path, the
    estimated bytes needed and the free space there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{_size(shutil.disk_usage(directory).free)} free there"
    except OSError:
        free = "free space unknown"
    basis = f"{progress:.0%} of the input written" if progress else "no output written yet"
    return (
        f"{os.strerror(code).lower()} writing {err.filename or path}: the output needs "
        f"about {_size(needed)} ({needed:,} bytes; estimate, {basis}), {free}; "
        "partial files removed"
    )
