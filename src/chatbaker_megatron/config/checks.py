"""The schema-wide checks: every numeric key within its declared range, no unknown keys.

A numeric field of a config dataclass declares its range where it is
defined, `save_interval: int | None = bounded(100, ge=1)`, and `check_ranges`
checks all of them in one walk (tests/unit/test_config.py asserts that every
numeric field of every config dataclass declares one). `None` is always
accepted where the type allows it: it means "off" or "derive it".

`check_known_keys` refuses keys the schema does not have. Hydra's `+key=value`
adds a key even to a structured (struct-mode) config, on purpose, and
`OmegaConf.to_object` then drops it silently, so `+train.foo=1` would be
accepted, ignored and written to config.yaml.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

RANGE = "range"


class ConfigError(ValueError):
    """An impossible or inconsistent configuration; the message names the key."""


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


def _check_value(key: str, value: Any, bound: Range) -> None:
    if value is None or isinstance(value, bool):
        return
    if not bound.contains(value):
        finite = "" if math.isfinite(value) else "a finite number "
        raise ConfigError(f"{key}={value!r}: expected {finite}{bound}")


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first numeric key outside its declared range.

    `cfg` is a config dataclass or a structured OmegaConf node; keys are
    reported as `prefix` + the dotted path, list items as `key[i]`.
    """
    schema = _schema(cfg)
    if schema is None:
        return
    for spec in fields(schema):
        key, value = f"{prefix}{spec.name}", getattr(cfg, spec.name)
        bound = spec.metadata.get(RANGE)
        items = enumerate(value) if isinstance(value, list | ListConfig) else None
        if items is None and _schema(value) is not None:
            check_ranges(value, f"{key}.")
        elif items is not None:
            for i, item in items:
                if _schema(item) is not None:
                    check_ranges(item, f"{key}[{i}].")
                elif bound is not None:
                    _check_value(f"{key}[{i}]", item, bound)
        elif bound is not None:
            _check_value(key, value, bound)


def check_known_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Raise ConfigError naming the first key of `node` that `schema` (a dataclass) lacks."""
    known = {spec.name: spec for spec in fields(schema)}
    for key in node:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(
                f"{prefix}{key}: unknown config key{hint}; "
                f"{prefix.rstrip('.') or 'the root'} has {', '.join(known)}"
            )
        child = node._get_node(key)
        if isinstance(child, DictConfig) and _schema(child) is not None:
            check_known_keys(child, _schema(child), f"{prefix}{key}.")
        elif isinstance(child, ListConfig):
            for i in range(len(child)):
                item = child._get_node(i)
                if isinstance(item, DictConfig) and _schema(item) is not None:
                    check_known_keys(item, _schema(item), f"{prefix}{key}[{i}].")
