"""Checkpointing config: the `checkpoint` Hydra group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckpointConfig:
    # Directory of iter_NNNNNNN checkpoints and the `latest` marker; null = <run_dir>/checkpoints.
    dir: str | None = None
    save_interval: int | None = 100  # iterations; null = only at the end / on exit
    keep_last: int = 2  # older checkpoints are deleted after a newer one is complete
    # Resume from `<dir>/latest` when it exists.
    auto_resume: bool = True
    save_on_exit: bool = True
