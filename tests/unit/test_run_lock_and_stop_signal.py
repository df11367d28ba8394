"""The run-dir and checkpoint-dir locks, the ranks' stop requests and how a job ends, in one process."""

from __future__ import annotations

import logging
import os
import signal
import socket

import pytest

from chatbaker_megatron.launch import FATAL_ERROR_FILE, check_stop_path
from chatbaker_megatron.run_lock import (
    LAUNCHER_PID_ENV,
    RunDirLockedError,
    RunLock,
    held_by_launcher,
)
from chatbaker_megatron.stop_signals import (
    STOP_FILE_ENV,
    StopRequest,
    StopRequested,
    StopSignals,
    stop_signals_raise,
)


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
    stop = StopRequest()
    os.kill(os.getpid(), sig)
    assert stop.received == sig
    # Repeats of SIGTERM/SIGUSR1 (SLURM may send both, torchrun forwards again) never force.
    if sig != signal.SIGINT:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_after_ctrl_c_forces(second, restore_handlers):
    stop = StopRequest()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), second)


def test_any_earlier_ctrl_c_makes_sigint_or_sigterm_force():
    """One rule for the launcher and the ranks (stop_signals.StopSignals)."""
    stops = StopSignals()
    assert [stops.receive(s) for s in (signal.SIGUSR1, signal.SIGTERM)] == [False, False]
    assert not stops.forced
    assert [stops.receive(s) for s in (signal.SIGINT, signal.SIGUSR1)] == [False, False]
    assert stops.receive(signal.SIGTERM) and stops.forced


def test_preprocessing_raises_on_signals_left_at_their_default(restore_handlers):
    with pytest.raises(StopRequested) as caught, stop_signals_raise():
        os.kill(os.getpid(), signal.SIGHUP)
    assert caught.value.signum == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # restored
    # A handler someone else installed (a launcher's) keeps deciding.
    seen: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    with stop_signals_raise():
        os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM]


def test_two_run_dirs_sharing_a_checkpoint_dir_are_refused(tmp_path):
    from chatbaker_megatron.config.checkpoint import CheckpointConfig
    from chatbaker_megatron.config.schema import RunConfig
    from chatbaker_megatron.train import _job_locks

    def run(name: str, checkpoint_dir: str | None) -> RunConfig:
        return RunConfig(
            run_dir=str(tmp_path / name), checkpoint=CheckpointConfig(dir=checkpoint_dir)
        )

    shared = str(tmp_path / "shared_checkpoints")
    first = _job_locks(run("a", shared), str(tmp_path / "a"))
    with pytest.raises(
        RunDirLockedError, match=rf"checkpoint dir {shared} is in use.*checkpoint\.dir="
    ):
        _job_locks(run("b", shared), str(tmp_path / "b"))
    # The refused job released its run dir's lock again.
    RunLock(str(tmp_path / "b")).close()
    # The default checkpoint dir (<run_dir>/checkpoints) is locked too: a run pointing
    # checkpoint.dir at another run's default is refused.
    other = _job_locks(run("c", None), str(tmp_path / "c"))
    with pytest.raises(RunDirLockedError, match="checkpoint dir"):
        _job_locks(run("d", str(tmp_path / "c" / "checkpoints")), str(tmp_path / "d"))
    for lock in first + other:
        lock.close()


def test_the_stop_file_requests_a_stop(tmp_path, monkeypatch, restore_handlers):
    stop_file = tmp_path / "stop_requested"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop_file))
    stop = StopRequest()
    assert not stop.requested()
    stop_file.write_text("SIGUSR1\n")
    assert stop.requested() and stop.received is None


def test_a_slurm_launch_needs_a_way_for_the_warning_to_reach_the_ranks(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv(STOP_FILE_ENV, raising=False)
    with pytest.raises(SystemExit, match=r"does not forward SIGUSR1, and CHATBAKER_STOP_FILE"):
        check_stop_path([])
    check_stop_path(["--signals-to-handle=SIGTERM,SIGUSR1"])  # torch >= 2.9 forwards it
    monkeypatch.setenv(STOP_FILE_ENV, "/shared/stop-42")
    check_stop_path([])  # the sbatch's trap writes the stop file
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv(STOP_FILE_ENV)
    check_stop_path([])  # no SLURM warning to pass on


def test_only_errors_a_restart_cannot_heal_end_the_job(tmp_path):
    from chatbaker_megatron.checkpoint.layout import CheckpointError
    from chatbaker_megatron.data.datasets.integrity import DataIntegrityError
    from chatbaker_megatron.training.failures import (
        DETERMINISTIC_ERRORS,
        claim_fatal_error,
        one_line,
    )
    from chatbaker_megatron.training.health import NonFiniteLossError

    for err in (CheckpointError("x"), DataIntegrityError("x"), NonFiniteLossError("x")):
        assert isinstance(err, DETERMINISTIC_ERRORS)
    # A failed collective or a dead peer: a restart may heal it.
    for err in (RuntimeError("Connection closed by peer"), TimeoutError("collective")):
        assert not isinstance(err, DETERMINISTIC_ERRORS)
    assert (
        one_line(RunDirLockedError("run dir x\nis in use")) == "cannot start: run dir x is in use"
    )
    assert claim_fatal_error(str(tmp_path), "first")
    assert not claim_fatal_error(str(tmp_path), "second")  # every rank may meet it: one line
    assert (tmp_path / FATAL_ERROR_FILE).read_text() == "first\n"


def test_a_full_disk_stops_logging_with_one_line(capfd):
    from chatbaker_megatron.train import _FileHandler

    handler = _FileHandler("/dev/full")
    handler.set_name("/dev/full")
    logger = logging.getLogger("test_full_disk")
    logger.addHandler(handler)
    try:
        for _ in range(3):
            logger.warning("x" * 10000)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capfd.readouterr().err
    assert "--- Logging error ---" not in err
    assert err.count("logging to /dev/full stopped: [Errno 28] No space left on device") == 1
