"""Stop signals: what a chatbaker process makes of them, in one place.

- A training job: SIGTERM, SIGUSR1 (SLURM's warning before a time limit) and
  SIGINT (Ctrl-C) ask for a stop with a checkpoint after the current step
  (`STOP_SIGNALS`); after a Ctrl-C, another SIGINT or SIGTERM forces a stop at
  once, without one (`StopSignals`, the one rule for the launcher and the
  ranks). `chatbaker train`'s launcher passes a request on through the run's
  stop file (`STOP_FILE_ENV`, `write_stop_file`); each rank's `StopRequest`
  takes its own signals and checks that file after every step.
- Preprocessing: SIGTERM and SIGHUP, whose default action ends the process
  without running `finally`, raise `StopRequested` instead, so the partial
  output is removed (`stop_signals_raise`).

Handlers are installed and restored by `handling` (the main thread only, as
Python requires). Imports nothing of the project, and neither torch nor
megatron: preprocessing uses it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

# The run's stop file: `chatbaker train`'s launcher (or the sbatch's trap) writes
# it on a stop signal; every rank checks for it after each step.
STOP_FILE_ENV = "CHATBAKER_STOP_FILE"
# What asks a training job to stop with a checkpoint (exit code 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# What preprocessing turns into StopRequested: their default action kills the
# process outright (SLURM's scancel, `timeout`, a closed terminal). Ctrl-C
# already raises KeyboardInterrupt.
ABORT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# The exit code of a run stopped by a forcing signal (StopSignals), without a final
# checkpoint: the shell's code for a death by SIGINT.
FORCED_STOP_CODE = 128 + signal.SIGINT

Handler = Callable[[int, FrameType | None], Any]


@contextlib.contextmanager
def handling(
    handler: Handler, signals: Sequence[int] = STOP_SIGNALS, *, only_default: bool = False
) -> Iterator[None]:
    """Within the block `handler` takes `signals`; the handlers before come back after.

    `only_default`: only the signals still at their default action, so a
    handler someone else installed (a launcher's) keeps deciding. On a thread
    other than the main one nothing changes (only the main thread may set
    handlers; the caller's thread keeps the process's handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    chosen = [s for s in signals if not only_default or signal.getsignal(s) == signal.SIG_DFL]
    previous = {sig: signal.signal(sig, handler) for sig in chosen}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StopSignals:
    """The stop signals a process received, in order, and the rule they follow.

    The first asks for a stop with a checkpoint; after a Ctrl-C, another
    SIGINT or SIGTERM forces (torchrun turns a second Ctrl-C at the launcher
    into SIGTERM for its ranks). Repeats of SIGTERM or SIGUSR1 alone never
    force: SLURM may send both, torchrun forwards again.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.forced = False

    def receive(self, signum: int) -> bool:
        """Record `signum`; whether it forces."""
        forces = signal.SIGINT in self.received and signum in (signal.SIGINT, signal.SIGTERM)
        self.received.append(signum)
        self.forced = self.forced or forces
        return forces


def write_stop_file(path: str, signum: int) -> None:
    """Ask the ranks to stop: they find the file after their current step (StopRequest)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{signal.Signals(signum).name} to pid {os.getpid()}\n")


class StopRequest:
    """A training rank's stop signals (STOP_SIGNALS) as a requested stop: a
    checkpoint after the current step, exit 0; a forcing one (StopSignals)
    raises KeyboardInterrupt: no checkpoint. The stop file named by
    STOP_FILE_ENV (written by `chatbaker train`'s launcher on a signal, or by
    the sbatch's trap) requests the same stop.

    The handlers stay for the rank's lifetime (the process ends with the run).
    """

    def __init__(self) -> None:
        self.signals = StopSignals()
        self.stop_file = os.environ.get(STOP_FILE_ENV)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    @property
    def received(self) -> int | None:
        """The last stop signal that reached this rank, if any."""
        return self.signals.received[-1] if self.signals.received else None

    def requested(self) -> bool:
        """A stop signal reached this rank, or the stop file exists."""
        return self.received is not None or bool(self.stop_file and os.path.exists(self.stop_file))

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.received is None
        if self.signals.receive(signum):
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} after Ctrl-C: stopping now")
        if first:
            log.warning(
                "%s: stopping with a checkpoint after this step%s",
                signal.Signals(signum).name,
                "; Ctrl-C again stops at once, without one" if signum == signal.SIGINT else "",
            )


class StopRequested(BaseException):
    """A stop signal arrived; a BaseException like KeyboardInterrupt, so `except Exception` passes it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signum)


def stop_signals_raise() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGTERM/SIGHUP left at their default raise StopRequested instead."""
    return handling(_raise, ABORT_SIGNALS, only_default=True)
