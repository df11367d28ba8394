"""Entry point: `python -m chatbaker_megatron.train [overrides]` (= `chatbaker train`).

Composes the Hydra config (conf/), validates it before any process group
starts, then either trains (under torchrun: every rank composes the same
config) or prepares the data the config asks to be built (the bundled demo
corpus) and launches torchrun for this node with the same overrides. Hydra
multirun (`-m a=1,2`) thus runs one torchrun job per point, each in its own
run directory. `--cfg job` prints the resolved config without running;
`--dry-run` builds chosen ranks' shards as fake tensors (training/dry_run.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from chatbaker_megatron import notices
from chatbaker_megatron.config.compose import check_override_keys
from chatbaker_megatron.config.schema import ConfigError, RunConfig, register, to_run_config
from chatbaker_megatron.data.demo.prepare import prepare_data
from chatbaker_megatron.launch import (
    FATAL_ERROR_FILE,
    die_with_parent,
    parent_is_torchrun,
    run_torchrun,
    under_torchrun,
)
from chatbaker_megatron.run_lock import (
    LAUNCHER_PID_ENV,
    RunDirLockedError,
    RunLock,
    held_by_launcher,
)
from chatbaker_megatron.stop_signals import FORCED_STOP_CODE

log = logging.getLogger("chatbaker_megatron")

register()

# `--dry-run [--ranks R,...] [--json]`, taken off argv before Hydra parses it.
_dry_run: argparse.Namespace | None = None
# Written by the launcher on a stop signal (stop_signals.STOP_FILE_ENV): the ranks stop with a checkpoint.
STOP_FILE = "stop_requested"


def _take_dry_run_flags(argv: list[str]) -> list[str]:
    """Parse the dry-run flags (training/dry_run.py) out of `argv`; return the rest for Hydra."""
    global _dry_run
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--ranks", type=lambda s: [int(r) for r in s.split(",")])
    parser.add_argument("--json", action="store_true")
    flags, rest = parser.parse_known_args(argv)
    _dry_run = flags if flags.dry_run else None
    return rest


class _GiveUpOnWriteError(logging.Handler):
    """A handler that, when a write fails (a full disk), says so once on stderr and
    stops writing, instead of logging's "--- Logging error ---" traceback per record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            err = sys.exc_info()[1]
            with contextlib.suppress(OSError):
                print(f"logging to {self.name} stopped: {err}", file=sys.stderr, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)


class _ConsoleHandler(_GiveUpOnWriteError, logging.StreamHandler):
    pass


class _FileHandler(_GiveUpOnWriteError, logging.FileHandler):
    pass


def _setup_logging(run_dir: str) -> None:
    """Rank 0 logs INFO to the console and train.log; the other ranks only warnings."""
    rank = int(os.environ.get("RANK", "0"))
    console = _ConsoleHandler(sys.stdout)
    console.set_name("the console")
    handlers: list[logging.Handler] = [console]
    if rank == 0:
        path = os.path.join(run_dir, "train.log")
        handlers.append(_FileHandler(path))
        handlers[-1].set_name(path)
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[%(asctime)s rank{rank}] %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    # megatron-core logs every parameter and config field at INFO; keep its
    # warnings (its known harmless ones are hidden by notices.py).
    logging.getLogger("megatron").setLevel(logging.WARNING)


def _job_locks(run: RunConfig, run_dir: str) -> list[RunLock]:
    """The run dir's lock, then the checkpoint dir's (two run dirs may share one)."""
    locks = [RunLock(run_dir)]
    try:
        locks.append(RunLock(run.checkpoint_dir, "checkpoint dir"))
    except RunDirLockedError:
        locks[0].close()
        raise
    return locks


def _remove_if_empty(run_dir: str) -> None:
    """A refused run leaves no empty run dir behind (Hydra creates it before main)."""
    if run_dir and os.path.realpath(run_dir) != os.getcwd():
        with contextlib.suppress(OSError):
            os.rmdir(run_dir)


def _check_init_from(run: RunConfig, run_dir: str) -> None:
    """`train.init_from` must exist when the run starts from it (no checkpoint to resume)."""
    init_from = run.train.init_from
    resumes = run.checkpoint.auto_resume and os.path.exists(
        os.path.join(run.checkpoint_dir, "latest")
    )
    if init_from and not resumes and not os.path.exists(init_from):
        _remove_if_empty(run_dir)
        sys.exit(
            f"invalid config: train.init_from={init_from!r}: no such checkpoint or checkpoints "
            "directory"
        )


def _launch(run: RunConfig, run_dir: str) -> None:
    """This node's torchrun for the run, holding the run dir's and the checkpoint dir's
    locks throughout (restarts too); torchrun and the ranks die with this process."""
    _check_init_from(run, run_dir)
    # One lock per job, on node 0: every node shares the run dir.
    node_rank = os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", "0"))
    try:
        locks = _job_locks(run, run_dir) if int(node_rank) == 0 else []
    except RunDirLockedError as err:
        sys.exit(f"cannot start: {err}")
    fatal = os.path.join(run_dir, FATAL_ERROR_FILE)
    try:
        # The ranks' check (_lock_as_rank): this process holds their lock.
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        with contextlib.suppress(FileNotFoundError):
            os.remove(fatal)  # an earlier job's
        # Once per launch, here: the ranks only read the data.
        prepare_data(run.data)
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("run_dir=")]
        code = run_torchrun(
            run.cluster.nodes,
            run.cluster.devices_per_node,
            "chatbaker_megatron.train",
            [*overrides, f"run_dir={run_dir}"],
            max_restarts=run.launch.max_restarts,
            monitor_interval=run.launch.monitor_interval,
            stop_file=os.path.join(run_dir, STOP_FILE),
        )
    finally:
        for lock in locks:
            lock.close()
    if code == FORCED_STOP_CODE:
        sys.exit(code)
    if code and os.path.exists(fatal):
        # A rank stopped the job on an error no restart heals: its line, last.
        with open(fatal, encoding="utf-8", errors="replace") as f:
            sys.exit(f.read().strip())
    if code:
        sys.exit(f"training failed (torchrun exit code {code}); see {run_dir}/train.log")


def _lock_as_rank(run: RunConfig, run_dir: str) -> list[RunLock]:
    """Global rank 0 locks the run dir and the checkpoint dir unless its `chatbaker train`
    launcher holds the locks (ranks that torchrun started directly: the multi-node scripts)."""
    if int(os.environ.get("RANK", "0")) != 0 or held_by_launcher(run_dir):
        return []
    return _job_locks(run, run_dir)


@hydra.main(config_path="pkg://chatbaker_megatron.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Again here: under torchrun each rank enters here, not through the CLI.
    notices.hide_known_notices()
    try:
        run = to_run_config(cfg)
    except ConfigError as err:
        _remove_if_empty(HydraConfig.get().runtime.output_dir)
        sys.exit(f"invalid config: {err}")
    if _dry_run is not None:
        from chatbaker_megatron.training import dry_run

        sys.exit(dry_run.run(run, _dry_run.ranks, _dry_run.json))
    run_dir = run.run_dir = HydraConfig.get().runtime.output_dir
    if not under_torchrun():
        _launch(run, run_dir)
        return
    if parent_is_torchrun():
        # Killed with torchrun: a kill -9 of it (or of its launcher) leaves no rank behind.
        die_with_parent()
    from chatbaker_megatron.training.failures import DETERMINISTIC_ERRORS, end_job
    from chatbaker_megatron.training.trainer import train

    os.makedirs(run_dir, exist_ok=True)
    _setup_logging(run_dir)
    # Plain strings for the `Choice` keys: config.yaml and checkpoints hold no enum objects.
    # cast: OmegaConf types to_container's result as any container; a DictConfig's is a
    # dict, and a Hydra-composed config's keys are str.
    resolved = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    resolved["run_dir"] = run_dir
    # Absolute in the stored config, so tools reading the checkpoint (serve, export-hf)
    # find the tokenizer from any directory.
    resolved["data"]["root"] = os.path.abspath(os.path.expanduser(resolved["data"]["root"]))
    try:
        # Held until this rank exits (the kernel releases them with the process).
        locks = _lock_as_rank(run, run_dir)  # noqa: F841
        # Rank 0's trainer writes it as config.yaml once the run has started.
        state = train(run, resolved)
    except KeyboardInterrupt:
        sys.exit("stopped by a second Ctrl-C, without a final checkpoint")
    except DETERMINISTIC_ERRORS as err:
        end_job(run_dir, err)
    log.info(
        "done at iteration %d. Metrics: %s  Checkpoints: %s",
        state["iteration"],
        os.path.join(run_dir, "metrics.jsonl"),
        run.checkpoint_dir,
    )


def main_argv(argv: list[str]) -> int:
    """`chatbaker train ARGS`: Hydra parses ARGS itself (overrides, -m, --cfg job, --help)."""
    sys.argv = ["chatbaker train", *_take_dry_run_flags(argv)]
    try:
        # Flags (`--cfg job`, `-m`) and their values are Hydra's; overrides hold a `=`.
        check_override_keys([a for a in sys.argv[1:] if "=" in a and a[0] != "-"], RunConfig)
    except ConfigError as err:
        sys.exit(f"invalid config: {err}")
    main()
    return 0


if __name__ == "__main__":
    sys.argv[1:] = _take_dry_run_flags(sys.argv[1:])
    main()
