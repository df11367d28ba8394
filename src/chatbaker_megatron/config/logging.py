"""Metrics and logging config: the `logging` Hydra group."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "chatbaker"
    # offline writes under the run dir for a later `wandb sync`; online needs network.
    mode: str = "offline"


@dataclass
class LoggingConfig:
    log_interval: int = 10  # iterations between metric lines / metrics.jsonl records
    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
