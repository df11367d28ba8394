"""SIGTERM and SIGHUP as an exception while preprocessing, so the partial output is removed.

By default either signal ends the process at once: no `finally`, no
`__exit__`, and the `.partial-*` files stay behind (what SLURM's scancel,
`timeout` or a closed terminal did). Ctrl-C already raises KeyboardInterrupt.
A handler someone else installed (a launcher's) is left alone: it decides.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopRequested(BaseException):
    """A stop signal arrived; a BaseException like KeyboardInterrupt, so `except Exception` passes it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _raise(signum: int, _frame: Any) -> None:
    raise StopRequested(signum)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP left at their default raise StopRequested instead."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a caller's thread keeps the defaults
        return
    replaced = [sig for sig in SIGNALS if signal.getsignal(sig) == signal.SIG_DFL]
    for sig in replaced:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig in replaced:
            signal.signal(sig, signal.SIG_DFL)
