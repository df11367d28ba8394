"""Compose the Hydra config tree outside a Hydra app (planner, tests, tools)."""

from __future__ import annotations

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig

from chatbaker_megatron.config.checks import check_known_keys
from chatbaker_megatron.config.schema import RunConfig, register, to_run_config

CONFIG_MODULE = "chatbaker_megatron.conf"


def compose_dict(overrides: list[str] | None = None) -> DictConfig:
    """The composed config for these Hydra overrides: keys checked, values not yet validated."""
    register()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    check_known_keys(cfg, RunConfig)
    return cfg


def compose(overrides: list[str] | None = None) -> RunConfig:
    """The validated RunConfig for these Hydra overrides (as `chatbaker train` would see it)."""
    return to_run_config(compose_dict(overrides))
