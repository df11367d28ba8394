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
from chatbaker_megatron.config.schema import ConfigError, register, to_run_config
from chatbaker_megatron.data.demo.prepare import prepare_data
from chatbaker_megatron.launch import run_torchrun, under_torchrun

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
        # Once per launch, here: the ranks only read the data.
        prepare_data(run.data)
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("run_dir=")]
        code = run_torchrun(
            run.cluster.nodes,
            run.cluster.devices_per_node,
            "chatbaker_megatron.train",
            [*overrides, f"run_dir={run_dir}"],
        )
        if code:
            sys.exit(f"training failed (torchrun exit code {code}); see {run_dir}/train.log")
        return
    from chatbaker_megatron.training.trainer import train

    run.run_dir = run_dir
    os.makedirs(run_dir, exist_ok=True)
    _setup_logging(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["run_dir"] = run_dir
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(OmegaConf.to_yaml(resolved))
    state = train(run, resolved)
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
