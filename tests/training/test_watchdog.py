"""The hang watchdog (in this process, with its exit replaced; in a child process for
faulthandler's backstop and forks) and the health detectors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from chatbaker_megatron.training.watchdog import HANG_EXIT_CODE, HangWatchdog


class _Exit:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def _stuck_in_a_collective(watchdog_fired: threading.Event) -> None:
    watchdog_fired.wait(60)


def test_no_progress_dumps_every_thread_and_exits_nonzero(tmp_path):
    exit = _Exit()
    extra = []
    dog = HangWatchdog(
        str(tmp_path), 3, timeout_s=0.2, startup_timeout_s=0.2, exit=exit,
        extra_dump=lambda: extra.append("trace"),
    )  # fmt: skip
    stuck = threading.Thread(target=_stuck_in_a_collective, args=(exit.called,))
    stuck.start()
    dog.start()
    assert exit.called.wait(60)
    stuck.join()
    dog.stop()
    assert exit.codes == [HANG_EXIT_CODE]
    assert extra == ["trace"]
    dump = (tmp_path / "hangs" / "rank_3.txt").read_text()
    assert dump.startswith("rank 3: no progress for ")
    assert "before the first step (limit 0.2 s)" in dump
    assert "_stuck_in_a_collective" in dump  # another thread's stack, not only the watchdog's


def test_progress_and_long_operations_keep_it_quiet(tmp_path):
    exit = _Exit()
    dog = HangWatchdog(str(tmp_path), 0, timeout_s=1.0, startup_timeout_s=30.0, exit=exit)
    dog.start()
    for _ in range(30):  # 3 s of steps, each far inside the limit
        time.sleep(0.1)
        dog.progress()
    with dog.long_operation("a checkpoint save"):
        time.sleep(1.5)  # longer than timeout_s, inside startup_timeout_s
    dog.stop()
    assert exit.codes == []
    assert not (tmp_path / "hangs").exists()


def test_after_a_long_operation_the_step_limit_applies_again(tmp_path):
    exit = _Exit()
    dog = HangWatchdog(str(tmp_path), 1, timeout_s=0.3, startup_timeout_s=30.0, exit=exit)
    dog.start()
    with dog.long_operation("a checkpoint save"):
        pass
    assert exit.called.wait(60)
    dog.stop()
    assert (
        "after a checkpoint save (limit 0.3 s)" in (tmp_path / "hangs" / "rank_1.txt").read_text()
    )


def test_off_when_no_timeout(tmp_path):
    exit = _Exit()
    dog = HangWatchdog(str(tmp_path), 0, timeout_s=None, startup_timeout_s=0.01, exit=exit)
    dog.start()
    time.sleep(0.2)
    dog.progress()
    dog.stop()
    assert exit.codes == []


WATCHED = """
import ctypes, os, sys, time
from chatbaker_megatron.training import watchdog

watchdog.BACKSTOP_GRACE_S = 2
dog = watchdog.HangWatchdog(sys.argv[1], 0, timeout_s=0.5, startup_timeout_s=0.5)
dog.start()
"""


def _run_watched(body: str, run_dir: str) -> tuple[subprocess.CompletedProcess[str], float]:
    script = textwrap.dedent(WATCHED) + textwrap.dedent(body)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script, run_dir], capture_output=True, text=True, timeout=60
    )
    return result, time.monotonic() - started


def test_a_hang_with_the_gil_free_is_dumped_by_the_watchdog_thread(tmp_path):
    result, _ = _run_watched("def stuck_here():\n    time.sleep(30)\nstuck_here()\n", str(tmp_path))
    assert result.returncode == HANG_EXIT_CODE, result.stderr
    dump = (tmp_path / "hangs" / "rank_0.txt").read_text()
    assert dump.startswith("rank 0: no progress for "), dump
    assert "before the first step (limit 0.5 s)" in dump
    assert "in stuck_here" in dump  # the main thread's stack
    assert f"exiting with code {HANG_EXIT_CODE}" in result.stderr
    assert "Timeout" not in result.stderr  # the backstop was cancelled


def test_a_c_call_holding_the_gil_is_ended_by_faulthandlers_backstop(tmp_path):
    """No Python thread runs while libc's sleep holds the GIL (ctypes.PyDLL): before the
    backstop this rank slept on, with no stacks anywhere."""
    body = "def stuck_here():\n    ctypes.PyDLL(None).sleep(30)\nstuck_here()\n"
    result, seconds = _run_watched(body, str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert seconds < 20
    assert "Timeout (0:00:02" in result.stderr and "most recent call first" in result.stderr
    assert "in stuck_here" in result.stderr
    assert not (tmp_path / "hangs").exists()


def test_a_child_forked_while_it_is_armed_exits(tmp_path):
    """A child forked with faulthandler's timer armed hung at its exit (CPython's
    finalizer cancels the timer and waits for a thread the child does not have)."""
    body = """
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit, which runs faulthandler's finalizer
    for _ in range(100):
        dog.progress()  # the parent's watchdog stays armed meanwhile
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        sys.exit("the forked child hung at its exit")
    dog.stop()
    """
    result, _ = _run_watched(body, str(tmp_path))
    assert result.returncode == 0, result.stderr
