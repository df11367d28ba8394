"""The run config a checkpoint stores (`config` in its common state), read back.

The config is the resolved RunConfig as a plain dict; these helpers give
the parts that tools reading a checkpoint need, with errors that name
the checkpoint and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from chatbaker_megatron.config.data import resolve_path
from chatbaker_megatron.config.model import ModelConfig


def model_config_from_dict(model: dict[str, Any], where: str) -> ModelConfig:
    """The `model` section of a run config as a ModelConfig (unknown keys are an error)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), model)
    except Exception as err:
        raise ValueError(f"{where}: the model config does not fit ModelConfig: {err}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def run_tokenizer_dir(config: dict[str, Any], where: str) -> Path:
    """The tokenizer directory a run config names (data.root + data.tokenizer)."""
    data = config.get("data") or {}
    if not data.get("tokenizer"):
        raise ValueError(f"{where}: the run config has no data.tokenizer; pass --tokenizer DIR")
    path = Path(resolve_path(data.get("root") or ".", data["tokenizer"]))
    if not path.is_dir():
        raise FileNotFoundError(
            f"{where}: the run's tokenizer {path} (data.root={data.get('root')!r}, "
            f"data.tokenizer={data['tokenizer']!r}) is not there; relative paths are taken from "
            "the current directory. Run from the training directory or pass --tokenizer DIR"
        )
    return path


def run_chat_template(config: dict[str, Any]) -> str | None:
    """The chat template (a name or a YAML path) an SFT run trained with; None for pretraining."""
    data = config.get("data") or {}
    if data.get("kind") != "sft":
        return None
    return (data.get("sft") or {}).get("template") or "chatbaker"
