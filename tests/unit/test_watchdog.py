"""The hang watchdog (in this process, with its exit replaced) and the health detectors."""

from __future__ import annotations

import threading
import time

from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.training.health import (
    SpikeDetector,
    StragglerDetector,
    step_time_figures,
)
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


def test_spike_detector_needs_warmup_and_compares_with_the_running_mean():
    detector = SpikeDetector(factor=2.0, warmup_iters=3)
    state = TrainState()
    for loss in (5.0, 4.0, 3.0):
        assert not detector.is_spike(state, 100.0)  # still warming up
        detector.accept(state, loss)
    assert state.loss_ema_steps == 3
    mean = state.loss_ema
    assert 4.0 < mean < 5.0  # an EMA, weighted to the first losses
    assert not detector.is_spike(state, 1.99 * mean)
    assert detector.is_spike(state, 2.01 * mean)


def test_straggler_named_after_enough_slow_intervals_in_a_row():
    detector = StragglerDetector(factor=1.3, intervals=3)
    normal, slow = [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.5, 1.0]
    assert detector.observe(slow) == []
    assert detector.observe(slow) == []
    assert detector.observe(normal) == []  # the streak is broken
    assert detector.observe(slow) == []
    assert detector.observe(slow) == []
    assert detector.observe(slow) == [(2, 1.5)]
    assert detector.observe(slow) == []  # reported again after another 3
    assert detector.observe([1.0, 1.0, 1.25, 1.0]) == []  # within the factor


def test_step_time_figures_name_the_slowest_rank():
    figures = step_time_figures([0.2, 0.5, 0.1, 0.3])
    assert figures == {
        "rank_step_time_min_s": 0.1,
        "rank_step_time_median_s": 0.25,
        "rank_step_time_max_s": 0.5,
        "slowest_rank": 1,
    }
