"""The dry run's checkpoint figures: per rank and format, bytes written, gathered and loaded.

The figures come from checkpoint/sizes.py (the real sharded state dicts of
the built model and optimizer); this module lays them out, and sets them
against the time torchrun gives the ranks to stop.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from packaging.version import Version

from chatbaker_megatron.checkpoint.sizes import CheckpointCost
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.launch import RANK_ENV

# torchrun reads TORCH_ELASTIC_SHUTDOWN_TIMEOUT from this version; before, its
# ranks get 30 s between the forwarded stop signal and SIGKILL.
SHUTDOWN_TIMEOUT_FROM = Version("2.12")
OLD_TORCH_STOP_BUDGET_S = 30.0


def stop_budget_s(torch_version: str) -> float:
    """Seconds the ranks have to stop (a final step and a save) once torchrun forwards a stop."""
    if Version(Version(torch_version).base_version) >= SHUTDOWN_TIMEOUT_FROM:
        return float(RANK_ENV["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
    return OLD_TORCH_STOP_BUDGET_S


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def checkpoint_summary(cfg: RunConfig, costs: dict[int, CheckpointCost]) -> dict[str, Any]:
    """The formats the run saves with and what its slowest reported rank must write for each."""
    budget = stop_budget_s(torch.__version__)
    ck = cfg.checkpoint

    def worst(fmt: str) -> dict[str, Any]:
        written = max(c.formats[fmt].written for c in costs.values())
        gathered = max(c.formats[fmt].gathered for c in costs.values())
        return {
            "format": fmt,
            "max_written_bytes": written,
            "max_gathered_bytes": gathered,
            "write_rate_for_stop_budget_mb_s": written / budget / 1e6,
        }

    return {
        "torch": torch.__version__,
        "stop_budget_s": budget,
        "periodic_and_stop": worst(ck.format),
        "final": worst(ck.final_format),
    }


def checkpoint_json(cost: CheckpointCost) -> dict[str, Any]:
    return dataclasses.asdict(cost)


def checkpoint_lines(cfg: RunConfig, costs: dict[int, CheckpointCost]) -> list[str]:
    """The text table: one row per rank, weights-only then each optimizer format."""
    formats = list(next(iter(costs.values())).formats)
    head = f"{'rank':>5} {'weights':>8}" + "".join(
        f" | {fmt + ' written':>26} {'gathered':>9} {'load host':>9}" for fmt in formats
    )
    lines = ["checkpoint GiB per rank (tensor bytes; checkpoint/sizes.py):", head]
    for rank, cost in costs.items():
        row = f"{rank:>5} {_gib(cost.weights_written):>8}"
        for fmt in formats:
            f = cost.formats[fmt]
            row += f" | {_gib(f.written):>26} {_gib(f.gathered):>9} {_gib(f.load_host):>9}"
        lines.append(row)
    summary = checkpoint_summary(cfg, costs)
    stop, final = summary["periodic_and_stop"], summary["final"]
    lines.append(
        f"periodic and stop saves: checkpoint.format={stop['format']}, at most "
        f"{_gib(stop['max_written_bytes'])} GiB per rank (gathered "
        f"{_gib(stop['max_gathered_bytes'])}): {stop['write_rate_for_stop_budget_mb_s']:.0f} "
        f"MB/s per rank fills the {summary['stop_budget_s']:.0f} s stop budget of torch "
        f"{summary['torch']}; final save: checkpoint.final_format={final['format']}, at most "
        f"{_gib(final['max_written_bytes'])} GiB per rank (gathered "
        f"{_gib(final['max_gathered_bytes'])})"
    )
    return lines
