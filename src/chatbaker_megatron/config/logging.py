"""Metrics and logging config: the `logging` Hydra group."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatbaker_megatron.config.checks import bounded, check_values


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "chatbaker"
    # offline writes under the run dir for a later `wandb sync`; online needs network.
    mode: str = "offline"


@dataclass
class LoggingConfig:
    log_interval: int = bounded(10, ge=1)  # iterations between metric lines / metrics.jsonl records
    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group."""
        check_values(self, "logging.")
