"""Checkpointing config: the `checkpoint` Hydra group."""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.checks import Choice, bounded, check_values


class CheckpointFormat(Choice):
    """How the distributed optimizer's state is written (checkpoint/state.py
    OPTIMIZER_FORMATS; the costs of each in docs/training.md)."""

    dp_reshardable = "dp_reshardable"
    fully_reshardable = "fully_reshardable"


@dataclass
class CheckpointConfig:
    # Directory of iter_NNNNNNN checkpoints and the `latest` marker; null = <run_dir>/checkpoints.
    dir: str | None = None
    save_interval: int | None = bounded(100, ge=1)  # iterations; null = only at the end / on exit
    keep_last: int = bounded(2, ge=1)  # older checkpoints are deleted after a newer one is complete
    # Resume from `<dir>/latest` when it exists.
    auto_resume: bool = True
    # When the checkpoint to resume fails verification against its manifest (a missing,
    # truncated or corrupted shard), resume from the previous complete one instead of stopping.
    fallback: bool = True
    # Load (resume, train.init_from) a checkpoint that has no manifest.json, unchecked. Off:
    # such a checkpoint fails verification (with fallback, it is set aside like a damaged one).
    allow_unverified: bool = False
    save_on_exit: bool = True
    # Write the periodic checkpoints in the background (megatron's async save: a writer
    # process per rank) while training goes on; `latest` moves once every rank's files
    # are complete. Saves on exit, on a stop signal and on a halt are always synchronous.
    async_save: bool = False
    # The distributed optimizer's format for periodic saves and saves on a stop signal or
    # halt (dp_reshardable: every rank writes its own shard, no gather; resumes at the
    # same TP/PP/VPP, any DP) and for the save when a run reaches its last iteration
    # (fully_reshardable: loads at any layout; DP rank 0 gathers and writes it all).
    format: CheckpointFormat = CheckpointFormat.dp_reshardable
    final_format: CheckpointFormat = CheckpointFormat.fully_reshardable

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group."""
        check_values(self, "checkpoint.")
