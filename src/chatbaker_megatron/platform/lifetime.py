"""Helper processes that must not outlive the training rank that started them.

A rank killed by kill -9 (a node failure, an OOM kill, an in-job restart)
runs no cleanup, so its children would run on: megatron's write-results
Manager, a background checkpoint writer still writing into a directory the
restarted rank is about to reuse. Linux's parent-death signal ends them with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(parent_pid: int) -> None:
    """Run first in a child process: be killed when `parent_pid` (its parent) ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
