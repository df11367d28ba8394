"""The train command as users run it: Hydra + torchrun subprocesses on 2 CPU ranks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import yaml

from chatbaker_megatron.checkpoint.layout import latest_checkpoint
from chatbaker_megatron.checkpoint.state import read_common
from chatbaker_megatron.run_lock import RunLock
from chatbaker_megatron.stop_signals import FORCED_STOP_CODE
from tests.support import device_rules

TRAIN = [sys.executable, "-m", "chatbaker_megatron.train"]


def small_run(data_root: str, iters: int) -> list[str]:
    return [
        f"data.root={data_root}",
        "data.cache_mode=shared",  # one node (tests/e2e/conftest.py)
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
    assert not os.path.exists(tmp_path / "run")  # no empty run dir left behind (issue 25)
    assert time.monotonic() - started < 60
    # A train.init_from that does not exist is refused before the ranks start, naming the key.
    missing = tmp_path / "no_such_checkpoint"
    result = run([*TRAIN, f"train.init_from={missing}", f"run_dir={tmp_path}/run"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"invalid config: train.init_from='{missing}': no such checkpoint or checkpoints directory"
    )
    assert "torch.distributed.run" not in result.stdout + result.stderr
    assert not os.path.exists(tmp_path / "run")


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
            "cluster.devices_per_node=1",  # a job per point is the point, not its size
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
    base = [
        *TRAIN,
        f"run_dir={run_dir}",
        "checkpoint.save_interval=1",
        "checkpoint.keep_last=2",
        "cluster.devices_per_node=1",  # kills of 2-rank runs: benchmarks/chaos.py, test_restart
    ]
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

    # The resumed run is stopped by Ctrl-C (SIGINT to the launcher): a checkpoint, exit 0.
    log_offset = train_log_size(run_dir)
    proc = subprocess.Popen(
        base + small_run(data_root, 100000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_iteration(run_dir, proc, time.monotonic() + 240, log_offset)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        kill_tree(proc.pid)
        proc.wait()
    resumed = [r["iteration"] for r in metrics(run_dir) if r["iteration"] > saved_at]
    assert resumed[0] == saved_at + 1
    stopped_at = read_common(latest_checkpoint(ckpt_dir))["train_state"]["iteration"]
    assert stopped_at == resumed[-1]
    assert not any(n.endswith(".tmp") for n in os.listdir(ckpt_dir))


def test_second_job_in_a_run_dir_fails_at_once_touching_nothing(data_root, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "iter_0000004.tmp").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"iteration": 3}\n')
    with RunLock(str(run_dir)):  # the first job
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        result = run([*TRAIN, f"run_dir={run_dir}", *small_run(data_root, 2)], timeout=120)
        after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert result.returncode == 1
    assert f"run dir {run_dir} is in use by another job (pid {os.getpid()} on host" in result.stderr
    assert "torch.distributed.run" not in result.stdout + result.stderr
    assert after == before
    # Another run dir whose checkpoint.dir another job writes (issue 25: both wrote iter_N).
    shared = tmp_path / "shared_checkpoints"
    with RunLock(str(shared), "checkpoint dir"):
        other = [*TRAIN, f"run_dir={tmp_path / 'other'}", f"checkpoint.dir={shared}"]
        result = run([*other, *small_run(data_root, 2)], timeout=120)
    assert result.returncode == 1
    assert f"checkpoint dir {shared} is in use by another job" in result.stderr
    assert "torch.distributed.run" not in result.stdout + result.stderr


ENTRYPOINT = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "docker-entrypoint.sh")


def entrypoint(args: list[str], tmp_path, **env: str) -> list[str]:
    """The command docker-entrypoint.sh ends up exec'ing, through a stub python
    that prints its `-m` command lines and runs `-c` snippets for real."""
    stub = tmp_path / "python"
    stub.write_text(
        '#!/usr/bin/env bash\nif [ "$1" = -c ]; then exec "$REAL_PYTHON" "$@"; fi\necho "$@"\n'
    )
    stub.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "NNODES", "NODE_RANK")}
    result = subprocess.run(
        ["bash", ENTRYPOINT, *args],
        env={**clean, "PYTHON": str(stub), "REAL_PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.split()


def test_docker_entrypoint_dispatch(tmp_path):
    launch = ["-m", "chatbaker_megatron.launch"]
    assert entrypoint([], tmp_path) == launch
    assert entrypoint(["train", "parallel=tp2"], tmp_path) == [*launch, "parallel=tp2"]
    assert entrypoint(["parallel=tp2", "--cfg", "job"], tmp_path) == [
        *launch,
        "parallel=tp2",
        "--cfg",
        "job",
    ]
    assert entrypoint(["plan", "experiment=x"], tmp_path) == [
        "-m",
        "chatbaker_megatron.cli",
        "plan",
        "experiment=x",
    ]
    assert entrypoint(["echo", "hello"], tmp_path) == ["hello"]


def launch_dry_run(args: list[str], **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "NNODES", "NODE_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "chatbaker_megatron.launch", "--dry-run", *args],
        env={**clean, "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_node_launch_single_and_multi_node():
    # One node: `chatbaker train` on this node (no GPU here: the config's 2 CPU ranks).
    cmd, *env = launch_dry_run(["parallel=tp2"])
    assert cmd.split()[1:] == ["-m", "chatbaker_megatron.train", "cluster.nodes=1", "parallel=tp2"]
    assert "CUDA_DEVICE_MAX_CONNECTIONS=1" in env
    # GPUS_PER_NODE sizes the single node too.
    cmd, *_ = launch_dry_run([], GPUS_PER_NODE="4")
    assert cmd.endswith("cluster.nodes=1 cluster.devices_per_node=4")
    # Multi-node: this node's torchrun, forwarding SIGUSR1 to the ranks.
    cmd, *env = launch_dry_run(["train.seed=7"], MASTER_ADDR="n0", NNODES="4", NODE_RANK="2")
    assert "--nnodes=4" in cmd and "--node-rank=2" in cmd and "--rdzv-endpoint=n0:29500" in cmd
    assert "SIGUSR1" in cmd
    assert cmd.endswith(
        "-m chatbaker_megatron.train cluster.nodes=4 cluster.devices_per_node=8 train.seed=7"
    )
    # With the run's restart budget (launch.*, read from its config).
    assert "--max-restarts=3" in cmd and "--monitor-interval=1.0" in cmd
    cmd, *_ = launch_dry_run(["launch.max_restarts=0"], MASTER_ADDR="n0", NNODES="2", NODE_RANK="0")
    assert "--max-restarts=0" in cmd


def train_log_size(run_dir: str) -> int:
    path = os.path.join(run_dir, "train.log")
    return os.path.getsize(path) if os.path.exists(path) else 0


def wait_for_iteration(
    run_dir: str, proc: subprocess.Popen, deadline: float, log_offset: int = 0
) -> None:
    """Until this run logs a training step (in train.log, after `log_offset` bytes)."""
    while time.monotonic() < deadline and proc.poll() is None:
        with (
            contextlib.suppress(FileNotFoundError),
            open(os.path.join(run_dir, "train.log"), encoding="utf-8") as f,
        ):
            f.seek(log_offset)
            if "] iter " in f.read():
                return
        time.sleep(0.2)
    raise AssertionError("training never logged an iteration")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_signal_to_launcher_checkpoints_and_exits(data_root, tmp_path, sig):
    run_dir = str(tmp_path / "run")
    output = tmp_path / "output.txt"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [*TRAIN, f"run_dir={run_dir}", *small_run(data_root, 100000)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    tree: list[psutil.Process] = []
    try:
        wait_for_iteration(run_dir, proc, time.monotonic() + 240)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 3  # torchrun and its 2 ranks
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0
    finally:
        kill_tree(proc.pid)
        proc.wait()
    latest = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert read_common(latest)["train_state"]["iteration"] >= 1
    _gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"left running: {alive}"
    # Issue 25: the stop reaches the ranks through the stop file, not through torchrun,
    # whose SignalException traceback ended a clean, checkpointed stop.
    assert "Traceback" not in output.read_text(errors="replace")
    assert not os.path.exists(os.path.join(run_dir, "stop_requested"))


def _waiting_launcher(stop_file: str) -> subprocess.Popen:
    """A launcher (run_torchrun) of 2 stand-in ranks that wait for the stop file."""
    code = (
        "import sys; from chatbaker_megatron.launch import run_torchrun; "
        "sys.exit(run_torchrun(1, 2, 'tests.support.waiting_rank', [], max_restarts=0, "
        f"monitor_interval=0.2, stop_file={stop_file!r}))"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.Popen([sys.executable, "-c", code], cwd=root)


def _ranks_of(launcher: subprocess.Popen) -> list[psutil.Process]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tree = psutil.Process(launcher.pid).children(recursive=True)
        ranks = [p for p in tree if "torch.distributed.run" not in p.cmdline()]
        if len(ranks) == 2:
            return tree
        time.sleep(0.1)
    raise AssertionError("the stand-in ranks never started")


def test_torchrun_and_ranks_end_with_their_launcher(tmp_path):
    """Issue 25 item 1 / issue 19 item 3: a kill -9 of the launcher left torchrun and the
    ranks training with the run-dir lock released. (A SIGTERM, as `timeout` sends, is a
    stop request: test_stop_signal_to_launcher_checkpoints_and_exits.)"""
    launcher = _waiting_launcher(str(tmp_path / "stop_requested"))
    try:
        tree = _ranks_of(launcher)
        launcher.send_signal(signal.SIGKILL)  # the launcher alone
        launcher.wait()
        _gone, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"left running after a kill -9 of the launcher: {alive}"
    finally:
        kill_tree(launcher.pid)
        launcher.wait()


def test_a_sigterm_after_ctrl_c_at_the_launcher_forces(tmp_path):
    """The ranks' rule at the launcher too (stop_signals.StopSignals): after a Ctrl-C,
    a SIGTERM stops at once, without a checkpoint. It used to ask for a stop again."""
    launcher = _waiting_launcher(str(tmp_path / "stop_requested"))
    try:
        tree = _ranks_of(launcher)
        launcher.send_signal(signal.SIGINT)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == FORCED_STOP_CODE
        _gone, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"left running after a forced stop: {alive}"
    finally:
        kill_tree(launcher.pid)
        launcher.wait()


# A torchrun rank: what the device rules look like in it, written to <argv[1]>/rank<RANK>.json.
RULES_PROBE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from chatbaker_megatron import platform
    rules = sys.modules.get("tests.support.device_rules")
    report = {
        "installed": rules is not None and rules.installed(),
        "device": str(platform.detect().device),
        "host_tensor_tracked": rules is not None and rules.is_host_tensor(torch.zeros(1)),
    }
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(report, f)
    """
)


@pytest.mark.skipif(not device_rules.installed(), reason="the rules are a CPU test mode")
def test_torchrun_ranks_run_under_the_device_rules(tmp_path):
    """The suite's NCCL device rules reach the ranks torchrun starts, through the
    PYTHONPATH they inherit (tests/support/site/sitecustomize.py)."""
    probe = tmp_path / "probe.py"
    probe.write_text(RULES_PROBE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = run([*torchrun, "--nproc-per-node=2", str(probe), str(tmp_path)], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    expected = {"installed": True, "device": "cpu:0", "host_tensor_tracked": True}
    assert reports == [expected, expected]


def test_a_deterministic_fault_ends_the_job_at_once_with_one_line(data_root, tmp_path):
    """Issue 25 items 5 and 7: a corrupted .idx of the right size passed the data check, and
    every error at start-up went through all in-job restarts, buried in tracebacks."""
    from chatbaker_megatron.data.datasets.integrity import HEADER_BYTES

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    idx = data / "pretrain_en.idx"
    with open(idx, "r+b") as f:
        f.seek(len(b"MMIDIDX\x00\x00") + 9)
        sequences = int.from_bytes(f.read(8), "little")
        f.seek(HEADER_BYTES + 4 * sequences + 8 * 2)  # the third sequence's byte pointer
        f.write((-8).to_bytes(8, "little", signed=True))
    run_dir = tmp_path / "run"
    args = [*TRAIN, f"run_dir={run_dir}", *small_run(str(data), 2)]
    result = run([*args, "launch.max_restarts=3"], timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("data.datasets[") and f"{idx} is damaged at its first bad entry" in last
    assert "sequence 2 starts at byte -8" in last
    assert "Traceback" not in output
    assert output.count("pre-flight skipped") == 1  # one attempt: no restart
