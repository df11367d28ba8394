"""Stop signals, one home for the three ways a chatbaker process meets them.

`StopRequest` (a training rank): SIGTERM, SIGUSR1 and SIGINT become a
requested stop, honoured after the current step with a checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

log = logging.getLogger(__name__)

# The run's stop file: `chatbaker train`'s launcher (or the sbatch's trap) writes
# it on a stop signal; every rank checks for it after each step.
STOP_FILE_ENV = "CHATBAKER_STOP_FILE"


class StopRequest:
    """Turns SIGTERM, SIGUSR1 (SLURM's warning before a time limit) and SIGINT
    (Ctrl-C) into a requested stop: a checkpoint after the current step, exit 0.

    After a Ctrl-C, another SIGINT or SIGTERM (torchrun turns a second Ctrl-C
    at the launcher into SIGTERM) forces: KeyboardInterrupt, no checkpoint.
    The stop file named by STOP_FILE_ENV (written by `chatbaker train`'s
    launcher on a signal, or by the sbatch's trap) requests the same stop.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.stop_file = os.environ.get(STOP_FILE_ENV)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def requested(self) -> bool:
        """A stop signal reached this rank, or the stop file exists."""
        return self.received is not None or bool(self.stop_file and os.path.exists(self.stop_file))

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received == signal.SIGINT and signum in (signal.SIGINT, signal.SIGTERM):
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} after Ctrl-C: stopping now")
        if self.received is None:
            log.warning(
                "%s: stopping with a checkpoint after this step%s",
                signal.Signals(signum).name,
                "; Ctrl-C again stops at once, without one" if signum == signal.SIGINT else "",
            )
        self.received = signum
