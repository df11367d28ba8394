"""In-job restart: a rank killed mid-run is restarted by torchrun and the run heals itself.

`chatbaker train` on 2 CPU ranks; after the first checkpoint, kill -9 rank 1
(a node failure, an OOM kill). torchrun (launch.max_restarts) restarts both
ranks, they resume from the newest complete checkpoint and finish; the final
loss equals an undisturbed run's (resume is bit-exact on one topology), and
metrics.jsonl records the restart and the iterations it lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time

import psutil

from chatbaker_megatron.config.compose import compose
from chatbaker_megatron.training.trainer import Trainer
from tests.e2e.test_launch import TRAIN, kill_tree, metrics, small_run

ITERS = 12
SAVE_INTERVAL = 3


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of a training rank under the launcher (torchrun's worker with RANK=rank)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in psutil.Process(launcher).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                env = proc.environ()
                if "LOCAL_RANK" in env and env.get("RANK") == str(rank):
                    return proc.pid
    return None


def logged_iterations(run_dir: str) -> list[int]:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return [r["iteration"] for r in metrics(run_dir) if "loss" in r]
    return []


def straight_run_final_loss(overrides: list[str]) -> float | None:
    """Body run on every rank of the test pool: the same run, undisturbed."""
    import torch

    cfg = compose(overrides)
    Trainer(cfg, dataclasses.asdict(cfg)).run()
    if torch.distributed.get_rank() != 0:
        return None
    return [r["loss"] for r in metrics(cfg.run_dir) if "loss" in r][-1]


def test_killed_rank_is_restarted_and_the_run_finishes(ranks, data_root, tmp_path):
    run_dir = str(tmp_path / "run")
    run_args = [
        *small_run(data_root, ITERS),
        f"checkpoint.save_interval={SAVE_INTERVAL}",
        "launch.max_restarts=1",
        "launch.monitor_interval=0.2",
    ]
    proc = subprocess.Popen(
        [*TRAIN, f"run_dir={run_dir}", *run_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_after = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = logged_iterations(run_dir)
            # Past the first checkpoint, and not on a save: some work is lost.
            if done and SAVE_INTERVAL < done[-1] < ITERS - SAVE_INTERVAL:
                pid = rank_pid(proc.pid, 1)
                if pid is not None and done[-1] % SAVE_INTERVAL:
                    os.kill(pid, signal.SIGKILL)
                    killed_after = done[-1]
                    break
            time.sleep(0.05)
        assert killed_after is not None, (
            f"never caught rank 1 mid-run: {logged_iterations(run_dir)}"
        )
        assert proc.wait(timeout=240) == 0
    finally:
        kill_tree(proc.pid)
        proc.wait()

    rows = metrics(run_dir)
    (restart,) = [r for r in rows if r.get("event") == "restart"]
    resumed_from = restart["iteration"]
    assert restart["restarts"] == 1
    # The ranks may have run (and saved) a little further before the kill landed.
    assert resumed_from % SAVE_INTERVAL == 0 and resumed_from >= SAVE_INTERVAL
    assert restart["last_iteration"] >= max(killed_after, resumed_from)
    assert restart["iterations_lost"] == restart["last_iteration"] - resumed_from
    assert logged_iterations(run_dir)[-1] == ITERS

    reference_dir = str(tmp_path / "straight")
    reference = ranks.run(
        2,
        straight_run_final_loss,
        [*run_args[:-2], f"run_dir={reference_dir}", "cluster.devices_per_node=2"],
    )[0]
    assert [r["loss"] for r in rows if "loss" in r][-1] == reference
