"""How torchrun supervises the ranks: the `launch` Hydra group (conf/launch/default.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.checks import bounded, check_values


@dataclass
class LaunchConfig:
    # torchrun --max-restarts: when any rank dies, every rank of the node is
    # restarted (and, through the rendezvous, every node's) and resumes from the
    # newest complete checkpoint, this many times per job. 0 = plain torchrun:
    # the first failure ends the job.
    max_restarts: int = bounded(3, ge=0)
    # torchrun --monitor-interval: seconds between its checks of the ranks, so
    # the delay before a dead rank is noticed.
    monitor_interval: float = bounded(1.0, gt=0)

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group."""
        check_values(self, "launch.")
