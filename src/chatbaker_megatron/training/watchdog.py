"""The hang watchdog: a rank that makes no progress dumps its stacks and exits non-zero.

Each rank runs its own watchdog thread. A rank stuck anywhere (a collective
that never returns, a dead peer, I/O) stops completing steps, and so do all
the others, since they wait for it in the next collective: every rank's
watchdog fires at about the same moment, each writes the Python stacks of all
its threads (and on GPU NCCL's flight recorder) to `<run_dir>/hangs/`, and
each leaves with `os._exit`, which no blocked thread can hold up. torchrun
then sees failed ranks and its restart policy takes over.

The limit is `train.hang_timeout_s` from one completed step to the next;
until the first step completes and during a checkpoint save it is
`train.hang_startup_timeout_s` (communicator setup, compilation and storage
take longer than a step). SIGUSR2 dumps the stacks of a running rank to its
stderr at any time (faulthandler, so also while it is blocked in C++).

Two timers watch each deadline. The watchdog thread (Python) fires at the
limit and does what faulthandler's own timer cannot: the hang file naming the
rank, the phase and the limit, the NCCL flight recorder (`extra_dump`, Python
code), HANG_EXIT_CODE and one line on stderr; it cancels faulthandler's timer
first. That timer (`dump_traceback_later`, a C thread that needs no GIL)
fires BACKSTOP_GRACE_S later, so only when the watchdog thread could not run:
a rank stuck in a C call that holds the GIL still dumps its stacks (to
stderr) and exits (code 1) instead of waiting for the job's time limit. It
is paused around every fork: a child forked while it is armed hangs in its
next cancel, which its exit runs (CPython 3.12, tests/unit/test_watchdog.py).
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

# The exit code of a rank the watchdog ends (any non-zero code makes torchrun restart).
HANG_EXIT_CODE = 3
# How long after the limit faulthandler's timer ends a rank whose watchdog thread
# never got the GIL: far more than that thread needs to reach the GIL and cancel it.
BACKSTOP_GRACE_S = 30.0
# The watchdog whose faulthandler timer is armed (faulthandler has one per process).
_backstop: HangWatchdog | None = None


def _pause_backstop() -> None:
    if _backstop is not None:
        faulthandler.cancel_dump_traceback_later()


def _resume_backstop() -> None:
    if _backstop is not None:
        _backstop._arm_backstop()


os.register_at_fork(before=_pause_backstop, after_in_parent=_resume_backstop)


def hang_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "hangs")


def collective_trace_prefix(run_dir: str) -> str:
    """Where the NCCL flight recorder of rank N goes: this prefix + N."""
    return os.path.join(hang_dir(run_dir), "nccl_trace_rank_")


class HangWatchdog:
    """Ends this process when `progress()` is not called in time; see the module docstring.

    `timeout_s` None: off (`start()` starts nothing, the rest are no-ops). `extra_dump` runs after the stacks are written (the platform's collective
    trace); `exit` is `os._exit` except in tests.
    """

    def __init__(
        self,
        run_dir: str,
        rank: int,
        *,
        timeout_s: float | None,
        startup_timeout_s: float,
        extra_dump: Callable[[], None] | None = None,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.path = os.path.join(hang_dir(run_dir), f"rank_{rank}.txt")
        self.rank = rank
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self._extra_dump = extra_dump
        self._exit = exit
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._arm(startup_timeout_s, "before the first step")

    def _arm(self, limit_s: float, phase: str) -> None:
        with self._cond:
            self._since = time.monotonic()
            self._limit_s, self._phase = limit_s, phase
            if _backstop is self:
                self._arm_backstop()
            self._cond.notify()

    def _arm_backstop(self) -> None:
        """faulthandler's timer to this watchdog's deadline plus BACKSTOP_GRACE_S (~0.1 ms:
        it replaces faulthandler's C thread, at every step)."""
        remaining = max(self._since + self._limit_s - time.monotonic(), 0.0)
        faulthandler.dump_traceback_later(remaining + BACKSTOP_GRACE_S, exit=True, file=sys.stderr)

    def _disarm_backstop(self) -> None:
        global _backstop
        if _backstop is self:
            _backstop = None
            faulthandler.cancel_dump_traceback_later()

    def start(self) -> None:
        global _backstop
        if self.timeout_s is None:
            return
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
        _backstop = self
        self._arm(self.startup_timeout_s, "before the first step")
        self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)
        self._thread.start()

    def progress(self, phase: str = "after a step") -> None:
        """A step completed: the next one has `timeout_s` (nothing to do when the watchdog is off)."""
        if self.timeout_s is not None:
            self._arm(self.timeout_s, phase)

    @contextlib.contextmanager
    def long_operation(self, what: str) -> Iterator[None]:
        """`what` (a checkpoint save) gets `startup_timeout_s`; completing it counts as progress."""
        self._arm(self.startup_timeout_s, f"during {what}")
        yield
        self.progress(f"after {what}")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._disarm_backstop()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            faulthandler.unregister(signal.SIGUSR2)

    def _watch(self) -> None:
        with self._cond:
            while not self._stopped:
                remaining = self._since + self._limit_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._stopped:
                return
            self._disarm_backstop()  # this thread has the GIL: it takes over
            waited, limit, phase = time.monotonic() - self._since, self._limit_s, self._phase
        self._fire(waited, limit, phase)

    def _fire(self, waited: float, limit: float, phase: str) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(
                f"rank {self.rank}: no progress for {waited:.0f} s {phase} (limit {limit:g} s) "
                f"at {datetime.datetime.now().isoformat(timespec='seconds')}; stacks of all threads:\n"
            )
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        if self._extra_dump is not None:
            with contextlib.suppress(Exception):  # the stacks are out; never block the exit
                self._extra_dump()
        print(
            f"hang watchdog: rank {self.rank} made no progress for {waited:.0f} s {phase} "
            f"(limit {limit:g} s: train.hang_timeout_s / train.hang_startup_timeout_s); "
            f"stacks in {self.path}; exiting with code {HANG_EXIT_CODE}",
            file=sys.stderr,
            flush=True,
        )
        self._exit(HANG_EXIT_CODE)
