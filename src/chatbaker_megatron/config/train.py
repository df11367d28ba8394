"""Training loop config: the `train` Hydra group (conf/train/*.yaml)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from chatbaker_megatron.config.checks import Choice, ConfigError, bounded, check_values


class NanPolicy(Choice):
    skip = "skip"
    halt = "halt"


class SpikePolicy(Choice):
    """A loss spike (loss > train.spike_factor x its running mean): `skip` the update, or `off`."""

    skip = "skip"
    off = "off"


class PreferenceLoss(Choice):
    """Preference losses (training/preference_loss.py): DPO's sigmoid, IPO's squared
    loss, RPO = DPO + rpo_alpha x the NLL of the chosen reply."""

    dpo = "dpo"
    ipo = "ipo"
    rpo = "rpo"


@dataclass
class FaultInjectionConfig:
    # Rank `rank` sleeps forever before iteration hang_at_iteration (a hang
    # for the watchdog to catch); null = never.
    hang_at_iteration: int | None = bounded(None, ge=1)
    rank: int = bounded(0, ge=0)
    # Every rank's loss (and so its gradients) is multiplied by spike_scale
    # at iteration spike_at_iteration (a loss spike); null = never.
    spike_at_iteration: int | None = bounded(None, ge=1)
    spike_scale: float = bounded(10.0, gt=0)


@dataclass
class PreferenceLossConfig:
    """Preference tuning (data.kind=preference): the loss against the frozen reference model."""

    loss: PreferenceLoss = PreferenceLoss.dpo
    # DPO/RPO: the KL strength beta; IPO: its tau (the target margin is 1 / (2 beta)).
    beta: float = bounded(0.1, gt=0)
    # Conservative DPO: the fraction of pairs assumed mislabelled (dpo and rpo).
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)
    # RPO: weight of the chosen reply's per-token NLL (averaged over the global batch).
    rpo_alpha: float = bounded(1.0, ge=0)


@dataclass
class TrainConfig:
    seq_length: int = bounded(128, ge=1)
    global_batch_size: int = bounded(16, ge=1)
    # The budget: iterations, or tokens (iterations = ceil(tokens / (global batch * seq))).
    # Set exactly one.
    train_iters: int | None = bounded(300, ge=0)  # 0: a seed checkpoint
    train_tokens: int | None = bounded(None, ge=0)
    seed: int = bounded(1234, ge=0, le=2**32 - 1)  # numpy's seed range
    eval_interval: int = bounded(100, ge=0)  # iterations between validation runs; 0 disables
    eval_iters: int = bounded(2, ge=1)  # global batches per validation run
    # Stop (with a checkpoint) after this many iterations in this process, or
    # after this many minutes of wall time; null = no limit.
    exit_interval: int | None = bounded(None, ge=1)
    exit_duration_mins: float | None = bounded(None, gt=0)
    # A non-finite loss or grad norm: `skip` the update (counted in the
    # metrics) or `halt` after saving a checkpoint of the last good state.
    nan_policy: NanPolicy = NanPolicy.skip
    # Stop when this many updates in a row were skipped (non-finite values or loss spikes).
    max_consecutive_skips: int = bounded(10, ge=1)
    # Start from these model weights (a checkpoint directory, e.g. the PLM
    # for SFT): weights only, fresh optimizer, scheduler and data position.
    init_from: str | None = None
    # Hang watchdog (training/watchdog.py): a rank that completes no step for
    # this many seconds dumps its stacks to <run_dir>/hangs/ and exits
    # non-zero, so the restart policy takes over; null = off. Until the first
    # step completes, and during a checkpoint save, the limit is
    # hang_startup_timeout_s instead (NCCL setup, compilation, storage).
    hang_timeout_s: float | None = bounded(600.0, gt=0)
    hang_startup_timeout_s: float = bounded(1800.0, gt=0)
    # Stragglers: warn about a rank whose compute time per step stays above
    # straggler_factor x the median rank's for straggler_intervals log intervals in a row.
    straggler_factor: float = bounded(1.3, gt=1)
    straggler_intervals: int = bounded(3, ge=1)
    # Loss spikes (beside nan_policy): see SpikePolicy. The running mean is
    # an EMA of accepted losses; no step is judged in its first spike_warmup_iters.
    spike_policy: SpikePolicy = SpikePolicy.skip
    spike_factor: float = bounded(2.0, gt=1)
    spike_warmup_iters: int = bounded(20, ge=1)
    # Faults on purpose, for tests and drills; off by default.
    fault_injection: FaultInjectionConfig = field(default_factory=FaultInjectionConfig)
    # Used with data.kind=preference (conf/train/dpo.yaml).
    preference: PreferenceLossConfig = field(default_factory=PreferenceLossConfig)

    @property
    def iterations(self) -> int:
        """The iteration budget, from train_iters or train_tokens."""
        if self.train_iters is not None:
            return int(self.train_iters)
        assert self.train_tokens is not None, "validate(): one of train_iters, train_tokens is set"
        return math.ceil(self.train_tokens / (self.global_batch_size * self.seq_length))

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group."""
        check_values(self, "train.")
        if (self.train_iters is None) == (self.train_tokens is None):
            raise ConfigError(
                f"train.train_iters={self.train_iters!r}: set exactly one of train.train_iters "
                f"and train.train_tokens (train_tokens={self.train_tokens})"
            )
