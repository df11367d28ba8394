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


def _training_directories(config: dict[str, Any], where: str) -> list[Path]:
    """Where a relative data.root may be taken from: the current directory, and the
    directory training ran in (the checkpoint's path less the run config's relative
    run_dir, e.g. /work for /work/runs/demo/checkpoints/iter_0000010 and runs/demo)."""
    found = [Path.cwd()]
    run_dir = Path(str(config.get("run_dir") or ""))
    if run_dir.parts and not run_dir.is_absolute():
        checkpoint = Path(where).resolve()
        for parent in checkpoint.parents:
            if parent.parts[-len(run_dir.parts) :] == run_dir.parts:
                found.append(Path(*parent.parts[: -len(run_dir.parts)]))
                break
    return found


def run_tokenizer_dir(config: dict[str, Any], where: str) -> Path:
    """The tokenizer directory a run config names (data.root + data.tokenizer).

    Runs store an absolute data.root; an older run's relative one is taken from the
    current directory, then from the directory training ran in."""
    data = config.get("data") or {}
    if not data.get("tokenizer"):
        raise ValueError(f"{where}: the run config has no data.tokenizer; pass --tokenizer DIR")
    relative = Path(resolve_path(data.get("root") or ".", data["tokenizer"]))
    candidates = [base / relative for base in _training_directories(config, where)]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"{where}: the run's tokenizer {relative} (data.root={data.get('root')!r}, "
        f"data.tokenizer={data['tokenizer']!r}) is not in "
        f"{' nor '.join(str(p.parent) for p in candidates)}: pass --tokenizer DIR"
    )


def run_chat_template(config: dict[str, Any]) -> str | None:
    """The chat template (a name or a YAML path) an SFT or preference (DPO) run trained
    with; None for pretraining."""
    data = config.get("data") or {}
    kind = data.get("kind")
    if kind not in ("sft", "preference"):
        return None
    return (data.get(kind) or {}).get("template") or "chatbaker"
