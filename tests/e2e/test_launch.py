"""The train command as users run it: Hydra + torchrun subprocesses on 2 CPU ranks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from chatbaker_megatron.data.prepare import prepare_demo_data
from chatbaker_megatron.training.checkpoint import latest_checkpoint, read_common

TRAIN = [sys.executable, "-m", "chatbaker_megatron.train"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("demo_data"))
    prepare_demo_data(root)
    return root


def small_run(data_root: str, iters: int) -> list[str]:
    return [
        f"data.root={data_root}",
        "train.seq_length=64",
        "train.global_batch_size=4",
        f"train.train_iters={iters}",
        "train.eval_interval=0",
        "optim.warmup_iters=1",
        "logging.log_interval=1",
        "logging.tensorboard=false",
    ]


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, like a node failure.

    torchrun starts its workers in their own sessions, so killing the
    launcher's process group would leave them running.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def test_invalid_config_fails_before_any_process_starts(tmp_path):
    started = time.monotonic()
    result = run([*TRAIN, "parallel.tp=3", f"run_dir={tmp_path}/run"])
    assert result.returncode != 0
    assert "invalid config: parallel.tp*pp*cp=3: must divide the world size 2" in result.stderr
    assert "torch.distributed.run" not in result.stdout + result.stderr
    assert not os.path.exists(tmp_path / "run" / "train.log")
    assert time.monotonic() - started < 60


def test_cfg_job_prints_the_resolved_config(tmp_path):
    result = run([*TRAIN, "experiment=plm_7b_a100x256", "--cfg", "job"])
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["parallel"]["tp"] == 2 and cfg["model"]["hidden_size"] == 4096


def test_multirun_launches_one_torchrun_job_per_point(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run(
        [
            *TRAIN,
            "-m",
            "optim.lr=0.001,0.002",
            f"hydra.sweep.dir={sweep}",
            *small_run(data_root, 2),
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for job, lr in (("0", 0.001), ("1", 0.002)):
        run_dir = sweep / job
        with open(run_dir / "config.yaml", encoding="utf-8") as f:
            assert yaml.safe_load(f)["optim"]["lr"] == lr
        records = metrics(str(run_dir))
        assert [r["iteration"] for r in records] == [1, 2]
        assert latest_checkpoint(str(run_dir / "checkpoints")).endswith("iter_0000002")


def test_kill_during_checkpoint_write_then_resume(data_root, tmp_path):
    run_dir = str(tmp_path / "run")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    base = [*TRAIN, f"run_dir={run_dir}", "checkpoint.save_interval=1", "checkpoint.keep_last=2"]
    proc = subprocess.Popen(
        base + small_run(data_root, 40), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed_while_writing = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            complete = os.path.exists(os.path.join(ckpt_dir, "latest"))
            writing = [n for n in os.listdir(ckpt_dir) if n.endswith(".tmp")] if complete else []
            if writing:
                kill_tree(proc.pid)
                killed_while_writing = writing[0]
                break
            time.sleep(0.005)
    finally:
        kill_tree(proc.pid)
        proc.wait()
    assert killed_while_writing is not None, "never caught a checkpoint being written"

    latest = latest_checkpoint(ckpt_dir)
    assert not latest.endswith(".tmp")
    saved_at = read_common(latest)["train_state"]["iteration"]
    assert saved_at >= 1

    result = run(base + small_run(data_root, saved_at + 2), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = [r["iteration"] for r in metrics(run_dir) if r["iteration"] > saved_at]
    assert resumed[-2:] == [saved_at + 1, saved_at + 2]
    assert not any(n.endswith(".tmp") for n in os.listdir(ckpt_dir))
