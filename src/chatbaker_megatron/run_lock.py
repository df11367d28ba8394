"""One job per run directory and per checkpoint directory: exclusive locks on `<dir>/.lock`.

Two trainers in one run directory destroy each other's work (the second
removes the first one's in-flight `iter_N.tmp` checkpoint as stale, both
append to metrics.jsonl). `chatbaker train` takes the lock before it prepares
data or starts torchrun and holds it for the whole job, torchrun's restarts
included; ranks that torchrun started without it (the multi-node scripts)
take it on global rank 0. A second job fails at once, before it writes
anything, with a message naming the holder (host, pid, start time, command),
which the holder writes into the lock file. The checkpoint directory is
locked the same way (`<checkpoint.dir>/.lock`, also when it is the default
`<run_dir>/checkpoints`), so two run dirs sharing one `checkpoint.dir` never
write the same `iter_N` either.

`fcntl.flock`: the kernel releases it when its holder dies, even by SIGKILL,
so a lock is never stale. NFS clients turn it into a POSIX lock every node
sees; on a filesystem without locks (e.g. Lustre mounted without `flock`)
the run warns and proceeds unlocked.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# Set by `chatbaker train` for its ranks: the pid that holds their run dir's lock.
LAUNCHER_PID_ENV = "CHATBAKER_RUN_LOCK_PID"


class RunDirLockedError(RuntimeError):
    """Another live job holds the run directory's lock; the message names it."""


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_NAME)


def _holder(path: str) -> dict:
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as f:
        return json.load(f)
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown: it has not written the lock file yet"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, "
        f"started {holder.get('started')}: {holder.get('command')}"
    )


def _setting(what: str) -> str:
    return "checkpoint.dir=" if what == "checkpoint dir" else "run_dir="


class RunLock:
    """The held lock; released on close (or when this process ends).

    `what` names the directory in messages ("run dir", "checkpoint dir").
    """

    def __init__(self, run_dir: str, what: str = "run dir") -> None:
        os.makedirs(run_dir, exist_ok=True)
        self.path = lock_path(run_dir)
        # "a": create without truncating, so a refused job leaves the holder's record intact.
        self._file: IO[str] | None = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise RunDirLockedError(
                f"{what} {run_dir} is in use by another job ({_describe(_holder(self.path))}); "
                f"wait for it to end or stop it, or pick another {_setting(what)} (lock file "
                f"{self.path})"
            ) from None
        except OSError as err:
            self.close()
            log.warning(
                "%s %s is not locked: %s does not support flock (%s)", what, run_dir, self.path, err
            )
            return
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the last descriptor releases the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _err: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


def held_by_launcher(run_dir: str) -> bool:
    """Whether this rank's `chatbaker train` launcher holds the directory's lock."""
    holder = _holder(lock_path(run_dir))
    return (
        os.environ.get(LAUNCHER_PID_ENV) == str(holder.get("pid"))
        and holder.get("host") == socket.gethostname()
    )
