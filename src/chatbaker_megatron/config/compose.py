"""Compose a Hydra config tree outside a Hydra app (the verbs, planner, tests, tools).

Errors are one line naming the key. Hydra's own for an override of a key the
schema lacks (`train.seq_lenght=1`) suggests `+train.seq_lenght=1`, which would
add the typo; `check_override_keys` names the nearest known key instead, for
`chatbaker train` (a Hydra app: it calls this before Hydra composes) as for the
verbs composing here.
"""

from __future__ import annotations

import importlib.resources
import re
import typing
from dataclasses import fields, is_dataclass

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from chatbaker_megatron.config.checks import (
    Choice,
    ConfigError,
    check_known_keys,
    choices_of,
    unknown_key,
)
from chatbaker_megatron.config.schema import RunConfig, register, to_run_config

CONFIG_MODULE = "chatbaker_megatron.conf"


def _config_groups() -> set[str]:
    """The config groups of the shipped tree (conf/<group>/), e.g. `model`, `experiment`."""
    return {p.name for p in importlib.resources.files(CONFIG_MODULE).iterdir() if p.is_dir()}


def check_override_keys(overrides: list[str], schema: type) -> None:
    """Raise ConfigError naming the first overridden key that `schema` (a dataclass) lacks.

    Only plain `key=value` overrides of config keys: a group choice
    (`model=7b`), `hydra.*`, `+key` (refused later by `check_known_keys`) and
    `~key` are Hydra's to judge, as is an override that does not parse.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return
    groups = _config_groups()
    for override in parsed:
        path = override.key_or_group
        if override.type != OverrideType.CHANGE or "/" in path or path.split(".")[0] == "hydra":
            continue
        node, prefix = schema, ""
        for depth, part in enumerate(path.split(".")):
            if part not in {spec.name for spec in fields(node)}:
                if depth == 0 and part in groups:
                    break
                raise unknown_key(part, node, prefix)
            hint = typing.get_type_hints(node)[part]
            if not (isinstance(hint, type) and is_dataclass(hint)):
                break  # a value (a dict's or list's keys are checked when composed)
            node, prefix = hint, f"{prefix}{part}."


def _choice_at(schema: type, full_key: str) -> type[Choice] | None:
    """The `Choice` of the key (or list item) `full_key` of `schema`, if it has one."""
    *path, last = re.sub(r"\[\d+\]", "", full_key).split(".")
    for part in path:
        hint = typing.get_type_hints(schema).get(part)
        if not (isinstance(hint, type) and is_dataclass(hint)):
            return None
        schema = hint
    return choices_of(schema).get(last)


def _one_line(err: Exception, schema: type) -> str:
    """A composition error in one line naming the key: a value outside a `Choice` as
    `check_values` says it, else `key: reason` (OmegaConf's reason is its first line,
    e.g. "Value 'two' of type 'str' could not be converted to Integer")."""
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    key = getattr(cause, "full_key", None)
    if not isinstance(cause, OmegaConfBaseException) or not key:
        return str(err).strip().splitlines()[0]
    choice = _choice_at(schema, key)
    if choice is not None:
        return f"{key}={cause.value!r}: expected one of {', '.join(choice)}"
    return f"{key}: {str(cause).strip().splitlines()[0]}"


def compose_config(config_name: str, overrides: list[str], schema: type) -> DictConfig:
    """conf/<config_name>.yaml composed with these overrides, its keys checked against
    `schema`; a refused override or value is a one-line ConfigError. The caller has
    registered the schema with Hydra's ConfigStore."""
    check_override_keys(overrides, schema)
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err, schema)) from None
    check_known_keys(cfg, schema)
    return cfg


def compose_dict(overrides: list[str] | None = None) -> DictConfig:
    """The composed run config for these Hydra overrides: keys checked, values not yet validated."""
    register()
    return compose_config("config", list(overrides or []), RunConfig)


def compose(overrides: list[str] | None = None) -> RunConfig:
    """The validated RunConfig for these Hydra overrides (as `chatbaker train` would see it)."""
    return to_run_config(compose_dict(overrides))
