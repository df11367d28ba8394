"""Which errors a restart can heal, and how a rank ends the job on one that it cannot.

torchrun's elastic agent restarts every rank when one fails, up to
`launch.max_restarts` times. That heals a rank that was killed (OOM killer,
a node failure, the hang watchdog's exit) or a collective that failed on a
flaky link, but not an error that the restarted ranks meet again: a bad
config, a damaged data file, a checkpoint that cannot be verified, a disk
too small for a checkpoint, a lock held by another job, a run halted on a
non-finite loss. Those are DETERMINISTIC_ERRORS: the rank that meets one
first writes its one line to `<run_dir>/fatal_error.txt`, logs it, and kills
its torchrun (SIGKILL: no restart, no traceback), whose ranks die with it
(launch.die_with_parent); the launcher prints the line last and exits 1.
Every other exception keeps the default path: a traceback and a restart.
"""

from __future__ import annotations

import logging
import os
import signal

from chatbaker_megatron.atomic_files import create_once
from chatbaker_megatron.checkpoint.layout import CheckpointError
from chatbaker_megatron.config.checks import ConfigError
from chatbaker_megatron.data.datasets.integrity import DataIntegrityError
from chatbaker_megatron.launch import FATAL_ERROR_FILE, parent_is_torchrun
from chatbaker_megatron.model.dispatch import KernelBackendError
from chatbaker_megatron.parallel import TopologyError
from chatbaker_megatron.run_lock import RunDirLockedError
from chatbaker_megatron.training.health import LossSpikeError, NonFiniteLossError

log = logging.getLogger(__name__)

DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    ConfigError,
    DataIntegrityError,
    KernelBackendError,
    TopologyError,
    RunDirLockedError,
    NonFiniteLossError,
    LossSpikeError,
)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a lock conflict says that the run cannot start)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"cannot start: {text}" if isinstance(err, RunDirLockedError) else text


def claim_fatal_error(run_dir: str, message: str) -> bool:
    """Record `message` as the job's fatal error; False when another rank was first.
    (True also when the run dir cannot be written: the line must still be said.)"""
    try:
        # Whole or absent: the launcher reads it as soon as the job dies, which the
        # losing rank may cause the moment it sees the file.
        return create_once(os.path.join(run_dir, FATAL_ERROR_FILE), message + "\n")
    except OSError:
        return True


def end_job(run_dir: str, err: BaseException) -> None:
    """Stop the whole job now, without a restart: one line from the first rank, exit 1."""
    message = one_line(err)
    if claim_fatal_error(run_dir, message):
        log.error("%s", message)
    logging.shutdown()
    if parent_is_torchrun():
        os.kill(os.getppid(), signal.SIGKILL)
    os._exit(1)
