"""The schema-wide checks: every key within its declared range or choices, no unknown keys.

A numeric field of a config dataclass declares its range where it is
defined, `save_interval: int | None = bounded(100, ge=1)`; a field with a
fixed set of values has a `Choice` enum as its type, `format:
CheckpointFormat = CheckpointFormat.dp_reshardable`. OmegaConf refuses a
value outside the enum when Hydra composes; `check_values` checks ranges and
choices in one walk, also of dataclasses built in Python
(tests/unit/test_config.py asserts that every numeric field of every config
dataclass declares a range). `None` is always accepted where the type allows
it: it means "off" or "derive it".

`check_known_keys` refuses keys the schema does not have. Hydra's `+key=value`
adds a key even to a structured (struct-mode) config, on purpose, and
`OmegaConf.to_object` then drops it silently, so `+train.foo=1` would be
accepted, ignored and written to config.yaml.
"""

from __future__ import annotations

import difflib
import enum
import functools
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

RANGE = "range"


class ConfigError(ValueError):
    """An impossible or inconsistent configuration; the message names the key."""


class Choice(enum.StrEnum):
    """The allowed values of a config key, as the type of its field.

    Each member is named as its value (`fp16 = "fp16"`): OmegaConf matches a
    YAML or command-line value to a member by name. A member is a `str`, so
    `cfg.cluster.precision == "bf16"` and `DTYPES[cfg.cluster.precision]` hold.
    """

    def __repr__(self) -> str:
        # Messages and logs show the value as the YAML spells it.
        return repr(self.value)


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric key; unset bounds are open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            left = "[" if self.ge is not None else "("
            right = "]" if self.le is not None else ")"
            return f"in {left}{_number(low)}, {_number(high)}{right}"
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {_number(low)}"
        assert high is not None, "bounded() declares at least one bound"
        return f"{'<=' if self.le is not None else '<'} {_number(high)}"


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def bounded(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field whose value (each element, for a list) must lie in the range."""
    return field(
        default=default,
        default_factory=default_factory,
        metadata={RANGE: Range(ge=ge, gt=gt, le=le, lt=lt)},
    )


def _schema(node: Any) -> type | None:
    """The config dataclass of a dataclass object or a structured OmegaConf node."""
    if is_dataclass(node):
        return type(node)
    if isinstance(node, DictConfig):
        kind = OmegaConf.get_type(node)
        return kind if is_dataclass(kind) else None
    return None


def to_plain_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain data, each `Choice` as its string (what a checkpoint stores)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


@functools.cache
def choices_of(schema: type) -> dict[str, type[Choice]]:
    """The `Choice` enum of each field of `schema` typed by one (alone, optional or in a list)."""
    found = {}
    for name, hint in typing.get_type_hints(schema).items():
        while typing.get_origin(hint) in (list, typing.Union, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if isinstance(hint, type) and issubclass(hint, Choice):
            found[name] = hint
    return found


def _check_value(key: str, value: Any, bound: Range | None, choices: type[Choice] | None) -> None:
    if value is None or isinstance(value, bool):
        return
    if choices is not None and value not in list(choices):
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    if bound is not None and not bound.contains(value):
        finite = "" if math.isfinite(value) else "a finite number "
        raise ConfigError(f"{key}={value!r}: expected {finite}{bound}")


def check_values(cfg: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first key outside its declared range or choices.

    `cfg` is a config dataclass or a structured OmegaConf node; keys are
    reported as `prefix` + the dotted path, list items as `key[i]`.
    """
    schema = _schema(cfg)
    if schema is None:
        return
    choices = choices_of(schema)
    for spec in fields(schema):
        key, value = f"{prefix}{spec.name}", getattr(cfg, spec.name)
        bound, choice = spec.metadata.get(RANGE), choices.get(spec.name)
        items = enumerate(value) if isinstance(value, list | ListConfig) else None
        if items is None and _schema(value) is not None:
            check_values(value, f"{key}.")
        elif items is not None:
            for i, item in items:
                if _schema(item) is not None:
                    check_values(item, f"{key}[{i}].")
                else:
                    _check_value(f"{key}[{i}]", item, bound, choice)
        else:
            _check_value(key, value, bound, choice)


def unknown_key(key: str, schema: type, prefix: str = "") -> ConfigError:
    """The error for `prefix` + `key`, a key that `schema` (a dataclass) lacks: the nearest
    known key, and all of them."""
    known = [spec.name for spec in fields(schema)]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(
        f"{prefix}{key}: unknown config key{hint}; "
        f"{prefix.rstrip('.') or 'the root'} has {', '.join(known)}"
    )


def check_known_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Raise ConfigError naming the first key of `node` that `schema` (a dataclass) lacks."""
    known = {spec.name for spec in fields(schema)}
    for key in node:
        if key not in known:
            raise unknown_key(str(key), schema, prefix)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and (child_schema := _schema(child)) is not None:
            check_known_keys(child, child_schema, f"{prefix}{key}.")
        elif isinstance(child, ListConfig):
            for i in range(len(child)):
                item = child._get_node(i)
                if isinstance(item, DictConfig) and (item_schema := _schema(item)) is not None:
                    check_known_keys(item, item_schema, f"{prefix}{key}[{i}].")
