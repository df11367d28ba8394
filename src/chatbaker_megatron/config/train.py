"""Training loop config: the `train` Hydra group (conf/train/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

NAN_POLICIES = ("skip", "halt")


@dataclass
class TrainConfig:
    seq_length: int = 128
    global_batch_size: int = 8
    # The budget: iterations, or tokens (iterations = ceil(tokens / (global batch * seq))).
    # Set exactly one.
    train_iters: int | None = 200
    train_tokens: int | None = None
    seed: int = 1234
    eval_interval: int = 100  # iterations between validation runs; 0 disables
    eval_iters: int = 2  # global batches per validation run
    # Stop (with a checkpoint) after this many iterations in this process, or
    # after this many minutes of wall time; null = no limit.
    exit_interval: int | None = None
    exit_duration_mins: float | None = None
    # A non-finite loss or grad norm: `skip` the update (counted in the
    # metrics) or `halt` after saving a checkpoint of the last good state.
    nan_policy: str = "skip"
    # Stop when this many updates in a row were skipped for non-finite values.
    max_consecutive_skips: int = 10
    # Start from these model weights (a checkpoint directory, e.g. the PLM
    # for SFT): weights only, fresh optimizer, scheduler and data position.
    init_from: str | None = None
