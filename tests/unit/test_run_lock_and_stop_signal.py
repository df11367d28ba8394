"""The run-dir lock (one job per run dir) and the ranks' stop-signal handling, in one process."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from chatbaker_megatron.run_lock import (
    LAUNCHER_PID_ENV,
    RunDirLockedError,
    RunLock,
    held_by_launcher,
)
from chatbaker_megatron.training.trainer import _StopSignal


def test_second_lock_names_the_holder_and_the_first_release_frees_it(tmp_path):
    run_dir = str(tmp_path / "run")
    first = RunLock(run_dir)
    # flock locks belong to open files: a second open in this process is refused too.
    with pytest.raises(
        RunDirLockedError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"
    ):
        RunLock(run_dir)
    first.close()
    with RunLock(run_dir):
        pass


def test_ranks_recognise_their_launchers_lock(tmp_path, monkeypatch):
    with RunLock(str(tmp_path)):
        monkeypatch.setenv(LAUNCHER_PID_ENV, str(os.getpid()))
        assert held_by_launcher(str(tmp_path))
        monkeypatch.setenv(LAUNCHER_PID_ENV, str(os.getpid() + 1))
        assert not held_by_launcher(str(tmp_path))


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_stop_signal_is_recorded_not_raised(sig, restore_handlers):
    stop = _StopSignal()
    os.kill(os.getpid(), sig)
    assert stop.received == sig
    # Repeats of SIGTERM/SIGUSR1 (SLURM may send both, torchrun forwards again) never force.
    if sig != signal.SIGINT:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_after_ctrl_c_forces(second, restore_handlers):
    stop = _StopSignal()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), second)
