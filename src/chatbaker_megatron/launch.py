"""Start torchrun for a run when the train command is not already under it.

Two ways in, one place for the torchrun command line and the ranks' environment:

- `chatbaker train` and Hydra multirun points call `run_torchrun` from a plain
  process: it builds the torchrun command for this node (rendezvous from
  MASTER_ADDR / MASTER_PORT / NODE_RANK, or from SLURM's variables, when
  `cluster.nodes > 1`) and runs it as a child that dies with it (Linux's
  parent-death signal; the ranks do the same with torchrun, so a kill -9 of
  the launcher, or `timeout`, leaves no torchrun or rank behind). SIGTERM,
  SIGUSR1 and a first SIGINT write the run's stop file (STOP_FILE_ENV), which
  the ranks read at every step, whatever torchrun's version forwards. Under
  torchrun (LOCAL_RANK set) training starts directly instead.
- Every torchrun runs with the restart budget `launch.max_restarts` (its
  elastic agent): when a rank dies, it stops the others and starts them all
  again, and they resume from the newest complete checkpoint.
- `python -m chatbaker_megatron.launch [OVERRIDES]` is what the shell scripts
  (launch/torchrun_multinode.sh, the SLURM batch script, the Docker
  entrypoint) run: with MASTER_ADDR / NNODES / NODE_RANK in the environment it
  runs `chatbaker prepare-data` (the ranks only read data), reads the run's
  `launch` settings and replaces itself with this node's torchrun
  (multi-node); without them it replaces itself with `chatbaker train` on
  this node's GPUs (single node), which prepares the data itself.
  `--dry-run` prints the command instead of running it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Any

import yaml

from chatbaker_megatron.stop_signals import (
    FORCED_STOP_CODE,
    STOP_FILE_ENV,
    StopSignals,
    handling,
    write_stop_file,
)

log = logging.getLogger(__name__)

TRAIN_MODULE = "chatbaker_megatron.train"

# The environment every rank starts with (values already set by the user win).
RANK_ENV = {
    # megatron's tensor/sequence-parallel communication overlap relies on the
    # kernels being queued in issue order, which needs a single hardware queue.
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    # A failed or hung NCCL collective aborts the process (and so the job)
    # instead of leaving the other ranks blocked until the time limit.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    # After forwarding a stop signal, torchrun waits this many seconds for its
    # ranks before SIGKILL (default 30): enough to finish the current step and
    # write a checkpoint, and less than the sbatch's 120 s warning.
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "100",
}

# torchrun's default set plus SIGUSR1: SLURM's warning before the time limit,
# which the trainer turns into a checkpoint and a clean exit. torchrun forwards
# each of these to its ranks; any other signal would kill it and orphan them.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# Where a rank that hit an error no restart can heal writes its one line
# (first rank wins) before it ends the job: the launcher prints it last.
FATAL_ERROR_FILE = "fatal_error.txt"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

MULTINODE_VARS = ("MASTER_ADDR", "NNODES", "NODE_RANK")


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def die_with_parent(parent_pid: int | None = None) -> None:
    """Be killed (SIGKILL) when the parent process ends (Linux; elsewhere nothing).

    `parent_pid`: the expected parent; when it already died (before prctl took
    effect) this process exits at once. Default: the current parent, which
    must not be init (an orphan already).
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent or parent == 1:
        os._exit(1)


def parent_is_torchrun() -> bool:
    """Whether this process's parent is a torchrun (elastic agent) process."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"torch.distributed.run" in cmdline or b"torchrun" in cmdline


def rank_env(base: dict[str, str] | None = None, nproc_per_node: int = 1) -> dict[str, str]:
    """`base` (default: this process's environment) with RANK_ENV's defaults added, the
    signal list for torchruns that read it from the environment and, for a torchrun
    of `nproc_per_node` > 1 ranks, OMP_NUM_THREADS."""
    defaults = {**RANK_ENV, "TORCHELASTIC_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS}
    if nproc_per_node > 1:
        # One OpenMP thread per rank, torchrun's own choice when ranks share a node's
        # cores; chosen here, torchrun prints no banner announcing it. A user's value wins.
        defaults["OMP_NUM_THREADS"] = "1"
    return {**defaults, **(os.environ if base is None else base)}


def _first_slurm_host() -> str:
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    return hosts[0]


def _signal_flags() -> list[str]:
    """Make torchrun forward SIGUSR1 too (the flag exists since torch 2.9; older
    torchruns handle only their default signals, SIGTERM among them)."""
    from torch.distributed.launcher.api import LaunchConfig

    if "signals_to_handle" in LaunchConfig.__dataclass_fields__:
        return [f"--signals-to-handle={TORCHRUN_SIGNALS}"]
    return []


def check_stop_path(flags: list[str]) -> None:
    """Refuse a SLURM launch whose time-limit warning could not reach the ranks.

    SLURM's warning (SIGUSR1) reaches the ranks either through torchrun
    (`flags` holds --signals-to-handle: torch >= 2.9) or through the stop file
    (STOP_FILE_ENV) that the batch script touches from its trap. With
    neither, the warning would kill the agent and lose the final checkpoint.
    """
    if "SLURM_JOB_ID" not in os.environ or flags or os.environ.get(STOP_FILE_ENV):
        return
    import torch

    raise SystemExit(
        f"multi-node launch: this torchrun (torch {torch.__version__}, before 2.9) does not "
        f"forward SIGUSR1, and {STOP_FILE_ENV} is not set, so SLURM's warning before the time "
        "limit would kill the job without a final checkpoint: submit with "
        f"launch/slurm_a100x256.sbatch (it sets {STOP_FILE_ENV} and touches it from a trap on "
        f"--signal=B:USR1@120), or set {STOP_FILE_ENV} to a path on a shared filesystem and "
        "touch it from your batch script's trap"
    )


def torchrun_command(
    nnodes: int,
    nproc_per_node: int,
    module: str,
    args: list[str],
    *,
    max_restarts: int,
    monitor_interval: float,
    rdzv_id: str | None = None,
) -> list[str]:
    """The torchrun command line for this node (restart budget: the run's `launch.*`)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc_per_node}",
        f"--max-restarts={max_restarts}",
        f"--monitor-interval={monitor_interval}",
        *_signal_flags(),
    ]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        if "SLURM_JOB_NODELIST" in os.environ and "MASTER_ADDR" not in os.environ:
            master, node_rank = _first_slurm_host(), os.environ["SLURM_NODEID"]
        else:
            missing = [v for v in ("MASTER_ADDR", "NODE_RANK") if v not in os.environ]
            if missing:
                raise RuntimeError(
                    f"a {nnodes}-node run needs {', '.join(missing)} in the environment on every "
                    "node (or launch it through SLURM, or with launch/torchrun_multinode.sh)"
                )
            master, node_rank = os.environ["MASTER_ADDR"], os.environ["NODE_RANK"]
        port = os.environ.get("MASTER_PORT", "29500")
        cmd += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={master}:{port}",
        ]
        if rdzv_id is not None:
            cmd.append(f"--rdzv-id={rdzv_id}")
    return [*cmd, "-m", module, *args]


def run_torchrun(
    nnodes: int,
    nproc_per_node: int,
    module: str,
    args: list[str],
    *,
    max_restarts: int,
    monitor_interval: float,
    stop_file: str | None = None,
) -> int:
    """Run torchrun as a child and wait for it; 0 after a SIGTERM/SIGUSR1/SIGINT stop.

    torchrun dies with this process (parent-death signal), and is killed if
    this process leaves early. It gets its own process group, so a
    terminal's Ctrl-C reaches it only through the handler below. With
    `stop_file` (given to the ranks as STOP_FILE_ENV) a stop signal writes
    that file and torchrun is not signalled at all (no torchrun traceback,
    and no dependence on which signals the installed torchrun forwards); a
    forcing one (stop_signals.StopSignals: another SIGINT or SIGTERM after a
    Ctrl-C) kills torchrun, whose ranks die with it (FORCED_STOP_CODE).
    Without it the signals are passed on to torchrun, which passes them on.
    """
    cmd = torchrun_command(
        nnodes,
        nproc_per_node,
        module,
        args,
        max_restarts=max_restarts,
        monitor_interval=monitor_interval,
    )
    log.info("launching: %s", " ".join(cmd))
    env = rank_env(nproc_per_node=nproc_per_node)
    if stop_file is not None:
        env[STOP_FILE_ENV] = stop_file
        with contextlib.suppress(FileNotFoundError):
            os.remove(stop_file)  # a request left by an earlier job
    launcher = os.getpid()
    proc = subprocess.Popen(
        cmd, env=env, process_group=0, preexec_fn=lambda: die_with_parent(launcher)
    )
    stops = StopSignals()

    def forward(signum: int, _frame: FrameType | None) -> None:
        forces = stops.receive(signum)
        if proc.poll() is not None:
            return
        if stop_file is None:
            proc.send_signal(signum)
        elif forces:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            write_stop_file(stop_file, signum)

    try:
        with handling(forward):
            code = proc.wait()
    finally:
        if proc.poll() is None:  # leaving on an error: take torchrun (and so the ranks) along
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if stop_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(stop_file)
    if stops.forced:
        log.warning("stopped by a second signal after Ctrl-C, without a final checkpoint")
        return FORCED_STOP_CODE
    if stops.received and code in (0, 1):
        # torchrun exits 1 after any signal it forwarded, once its ranks are
        # gone; the trainer has checkpointed and stopped on its own by then.
        name = signal.Signals(stops.received[0]).name
        log.info("stopped on %s (checkpoint: see train.log)", name)
        return 0
    return code


def node_command(overrides: list[str]) -> list[str]:
    """What this node runs for `python -m chatbaker_megatron.launch OVERRIDES`.

    Multi-node when any of MASTER_ADDR / NNODES / NODE_RANK is set (all three
    are then required; GPUS_PER_NODE defaults to 8, RDZV_ID names the
    rendezvous): torchrun itself, so that a scheduler's signal reaches it
    directly. Single node otherwise: `chatbaker train` on this node's GPUs
    (GPUS_PER_NODE, else all that are visible; none: the config's
    cluster.devices_per_node, e.g. the 2 CPU ranks of the default config).
    """
    if any(v in os.environ for v in MULTINODE_VARS):
        missing = [v for v in MULTINODE_VARS if not os.environ.get(v)]
        if missing:
            raise SystemExit(
                f"multi-node launch: set {', '.join(missing)} too "
                f"(or none of {', '.join(MULTINODE_VARS)} for one node)"
            )
        nnodes, gpus = int(os.environ["NNODES"]), int(os.environ.get("GPUS_PER_NODE", "8"))
        cluster = [f"cluster.nodes={nnodes}", f"cluster.devices_per_node={gpus}"]
        settings = launch_settings(overrides)
        check_stop_path(_signal_flags())
        return torchrun_command(
            nnodes,
            gpus,
            TRAIN_MODULE,
            [*cluster, *overrides],
            max_restarts=int(settings["max_restarts"]),
            monitor_interval=float(settings["monitor_interval"]),
            rdzv_id=os.environ.get("RDZV_ID", "chatbaker"),
        )
    if os.environ.get("GPUS_PER_NODE"):
        gpus = int(os.environ["GPUS_PER_NODE"])
    else:
        from chatbaker_megatron.platform import local_gpu_count  # torch: only when needed

        gpus = local_gpu_count()
    cluster = ["cluster.nodes=1"] + ([f"cluster.devices_per_node={gpus}"] if gpus else [])
    return [sys.executable, "-m", TRAIN_MODULE, *cluster, *overrides]


def _hydra_overrides(args: list[str]) -> list[str]:
    """The Hydra overrides among `args`, without flags (--cfg job, -m) and their values."""
    return [a for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def launch_settings(args: list[str]) -> dict[str, Any]:
    """The run's resolved `launch` group (restart budget), from the train command's
    `--cfg job`: in a subprocess, so that this module imports nothing of the project."""
    cmd = [sys.executable, "-m", TRAIN_MODULE, *_hydra_overrides(args)]
    result = subprocess.run(
        [*cmd, "--cfg", "job", "--package", "launch"], capture_output=True, text=True, check=False
    )
    if result.returncode:
        # Hydra's message without its hint about HYDRA_FULL_ERROR, on one line.
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        message = "; ".join(line for line in lines if "HYDRA_FULL_ERROR" not in line)
        raise SystemExit(f"multi-node launch: invalid config: {message}")
    return yaml.safe_load(result.stdout)


def prepare_node_data(args: list[str]) -> None:
    """`chatbaker prepare-data` with the run's Hydra overrides, before torchrun starts the ranks.

    A subprocess, so that this module imports nothing of the project. Hydra
    flags (--cfg job, -m) and their values are left out: they do not change the data.
    """
    cmd = [sys.executable, "-m", "chatbaker_megatron.cli", "prepare-data", *_hydra_overrides(args)]
    code = subprocess.run(cmd, check=False).returncode
    if code:
        raise SystemExit(f"multi-node launch: `chatbaker prepare-data` failed (exit code {code})")


def main(argv: list[str] | None = None) -> None:
    """`python -m chatbaker_megatron.launch [--dry-run] [OVERRIDES...]`.

    Everything after an optional leading --dry-run goes to the train command
    unchanged (Hydra overrides, --cfg job, -m), so no argparse here.
    """
    args = sys.argv[1:] if argv is None else argv
    dry_run = args[:1] == ["--dry-run"]
    cmd = node_command(args[1:] if dry_run else args)
    env = rank_env()
    if dry_run:
        print(" ".join(cmd))
        for key in sorted(RANK_ENV):
            print(f"{key}={env[key]}")
        return
    if any(v in os.environ for v in MULTINODE_VARS):
        prepare_node_data(args)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
