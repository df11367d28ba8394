"""One home for every config default: the schema dataclasses (config/).

A YAML file under conf/ holds only what differs from what it is merged onto
(the schema's defaults, or the option or preset it builds on), and the
composed defaults are the schema's: `chatbaker train`, `chatbaker curate` and
`chatbaker eval-chat` with no override run exactly `RunConfig()`,
`CurateConfig()` and `EvalChatConfig()`. No exceptions: the run's name and
run dir are interpolations in `RunConfig` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig, OmegaConf

from chatbaker_megatron.config import curate, eval_chat
from chatbaker_megatron.config.compose import CONFIG_MODULE, compose_dict
from chatbaker_megatron.config.curate import CurateConfig
from chatbaker_megatron.config.eval_chat import EvalChatConfig
from chatbaker_megatron.config.schema import RunConfig

CONF = Path(__file__).resolve().parents[2] / "conf"
# Hydra's own launcher configs (hydra-submitit-launcher's schema), not ours.
NOT_OURS = {"hydra"}
GROUPS = {spec for spec in RunConfig.__dataclass_fields__ if spec not in ("name", "run_dir")}


def plain(node: Any, resolve: bool = False) -> Any:
    return OmegaConf.to_container(node, resolve=resolve, enum_to_str=True)


def yaml_files() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml") if p.relative_to(CONF).parts[0] not in NOT_OURS)


def own_keys(path: Path) -> dict[str, Any]:
    """The file's keys, less its defaults list."""
    node = plain(OmegaConf.load(path)) or {}
    node.pop("defaults", None)
    return node


def defaults_entries(path: Path) -> list[Any]:
    return list(OmegaConf.load(path).get("defaults") or [])


def base_of(path: Path) -> dict[str, Any]:
    """What Hydra merges `path` onto, as plain data."""
    parts = path.relative_to(CONF).parts
    if parts == ("config.yaml",):
        return plain(OmegaConf.structured(RunConfig))
    if parts in (("curate.yaml",), ("curate", "local.yaml"), ("curate", "slurm.yaml")):
        return plain(OmegaConf.structured(CurateConfig))
    if parts == ("eval_chat.yaml",):
        return plain(OmegaConf.structured(EvalChatConfig))
    group = parts[0]
    if group == "experiment":
        # The run with the preset's own group choices, before its keys.
        choices = []
        for entry in defaults_entries(path):
            ((key, option),) = entry.items()
            choices.append(f"{key.removeprefix('override /')}={option}")
        return plain(compose_dict(choices))
    assert group in GROUPS, f"{path}: which schema is this group's?"
    base = OmegaConf.structured(RunConfig)[group]
    for entry in defaults_entries(path):
        if entry != "_self_":  # an option built on another of its group (a100_8x1)
            base = OmegaConf.merge(base, own_keys(CONF / group / f"{entry}.yaml"))
    return plain(base)


def repeats(mine: dict[str, Any], base: dict[str, Any], prefix: str = "") -> list[str]:
    """`key=value` for every key of `mine` whose value `base` already has."""
    found = []
    for key, value in mine.items():
        if key not in base:
            continue  # unknown keys are refused elsewhere (tests/unit/test_config.py)
        if isinstance(value, dict) and isinstance(base[key], dict):
            found += repeats(value, base[key], f"{prefix}{key}.")
        elif value == base[key] and isinstance(value, bool) == isinstance(base[key], bool):
            found.append(f"{prefix}{key}={value!r}")  # 10000 repeats 10000.0; 1 is not true
    return found


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CONF)))
def test_no_yaml_repeats_a_default(path):
    found = repeats(own_keys(path), base_of(path))
    assert not found, (
        f"conf/{path.relative_to(CONF)} repeats what it is merged onto (the schema's "
        f"default, or the option it builds on); delete: {', '.join(found)}"
    )


def composed(config_name: str, register: Any) -> DictConfig:
    register()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name)


@pytest.mark.parametrize(
    ("node", "schema"),
    [
        (lambda: compose_dict([]), RunConfig),
        (lambda: composed("curate", curate.register), CurateConfig),
        (lambda: composed("eval_chat", eval_chat.register), EvalChatConfig),
    ],
    ids=["train", "curate", "eval_chat"],
)
def test_the_composed_defaults_are_the_schemas(node, schema):
    got = plain(node(), resolve=True)
    got.pop("hydra", None)
    got, want = flat(got), flat(plain(OmegaConf.structured(schema), resolve=True))
    differing = [
        f"{key}: conf {got.get(key)!r}, schema {want.get(key)!r}"
        for key in sorted(set(got) | set(want))
        if got.get(key) != want.get(key)
    ]
    assert not differing, "the default options change the schema's defaults:\n" + "\n".join(
        differing
    )


def flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_a_repeat_is_found():
    """The check above can fail: a key at its schema default is reported by name."""
    run = plain(OmegaConf.structured(RunConfig))
    assert repeats({"keep_last": 2, "save_interval": 50}, run["checkpoint"]) == ["keep_last=2"]
    assert repeats({"rotary_base": 10000, "num_query_groups": None}, run["model"]) == [
        "rotary_base=10000"
    ]
    assert repeats({"wandb": {"mode": "offline", "enabled": 0}}, run["logging"]) == [
        "wandb.mode='offline'"
    ]
