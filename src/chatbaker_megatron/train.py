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
import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from chatbaker_megatron import notices
from chatbaker_megatron.config.schema import ConfigError, RunConfig, register, to_run_config
from chatbaker_megatron.data.demo.prepare import prepare_data
from chatbaker_megatron.launch import FORCED_STOP_CODE, run_torchrun, under_torchrun
from chatbaker_megatron.run_lock import (
    LAUNCHER_PID_ENV,
    RunDirLockedError,
    RunLock,
    held_by_launcher,
)

log = logging.getLogger("chatbaker_megatron")

register()

# `--dry-run [--ranks R,...] [--json]`, taken off argv before Hydra parses it.
_dry_run: argparse.Namespace | None = None


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


def _setup_logging(run_dir: str) -> None:
    """Rank 0 logs INFO to the console and train.log; the other ranks only warnings."""
    rank = int(os.environ.get("RANK", "0"))
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0:
        handlers.append(logging.FileHandler(os.path.join(run_dir, "train.log")))
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


def _run_dir_lock(run_dir: str) -> RunLock:
    try:
        return RunLock(run_dir)
    except RunDirLockedError as err:
        sys.exit(f"cannot start: {err}")


def _launch(run: RunConfig, run_dir: str) -> None:
    """This node's torchrun for the run, holding the run dir's lock throughout (restarts too)."""
    # One lock per job, on node 0: every node shares the run dir.
    node_rank = os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", "0"))
    lock = _run_dir_lock(run_dir) if int(node_rank) == 0 else None
    try:
        # The ranks' check (_lock_as_rank): this process holds their lock.
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
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
        )
    finally:
        if lock is not None:
            lock.close()
    if code == FORCED_STOP_CODE:
        sys.exit(code)
    if code:
        sys.exit(f"training failed (torchrun exit code {code}); see {run_dir}/train.log")


def _lock_as_rank(run_dir: str) -> RunLock | None:
    """Global rank 0 locks the run dir unless its `chatbaker train` launcher holds the lock
    (ranks that torchrun started directly: the multi-node scripts)."""
    if int(os.environ.get("RANK", "0")) != 0 or held_by_launcher(run_dir):
        return None
    return _run_dir_lock(run_dir)


@hydra.main(config_path="pkg://chatbaker_megatron.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Again here: under torchrun each rank enters here, not through the CLI.
    notices.hide_known_notices()
    try:
        run = to_run_config(cfg)
    except ConfigError as err:
        sys.exit(f"invalid config: {err}")
    if _dry_run is not None:
        from chatbaker_megatron.training import dry_run

        sys.exit(dry_run.run(run, _dry_run.ranks, _dry_run.json))
    run_dir = HydraConfig.get().runtime.output_dir
    if not under_torchrun():
        _launch(run, run_dir)
        return
    from chatbaker_megatron.training.trainer import train

    run.run_dir = run_dir
    os.makedirs(run_dir, exist_ok=True)
    # Held until this rank exits (the kernel releases it with the process).
    lock = _lock_as_rank(run_dir)  # noqa: F841
    _setup_logging(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["run_dir"] = run_dir
    # Rank 0's trainer writes it as config.yaml once the run has started.
    try:
        state = train(run, resolved)
    except KeyboardInterrupt:
        sys.exit("stopped by a second Ctrl-C, without a final checkpoint")
    log.info(
        "done at iteration %d. Metrics: %s  Checkpoints: %s",
        state["iteration"],
        os.path.join(run_dir, "metrics.jsonl"),
        run.checkpoint.dir or os.path.join(run_dir, "checkpoints"),
    )


def main_argv(argv: list[str]) -> int:
    """`chatbaker train ARGS`: Hydra parses ARGS itself (overrides, -m, --cfg job, --help)."""
    sys.argv = ["chatbaker train", *_take_dry_run_flags(argv)]
    main()
    return 0


if __name__ == "__main__":
    sys.argv[1:] = _take_dry_run_flags(sys.argv[1:])
    main()
