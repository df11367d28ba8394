"""Read a training checkpoint's model tensors one layer at a time, at any saved TP/PP/VPP.

save.py writes every model tensor through megatron's
dist_checkpointing under its global, unsharded key (megatron stacks the
decoder layers of a chunk into one tensor with a leading layer dimension).
So the same keys come back whatever layout wrote them, and asking
dist_checkpointing for one layer's slice of each stacked tensor reads just
that layer's bytes: memory stays bounded by one layer (or by the embedding),
never by the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor

from chatbaker_megatron.checkpoint.layout import CheckpointError, resolve_checkpoint
from chatbaker_megatron.checkpoint.manifest import describe, verify_local
from chatbaker_megatron.checkpoint.run_config import model_config_from_dict
from chatbaker_megatron.checkpoint.state import read_common
from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.model.sharding import EMBEDDING, FINAL_NORM, OUTPUT_LAYER
from chatbaker_megatron.parallel import ensure_process_group

_LAYERS = "decoder.layers."
_TOP_LEVEL = ("embedding.", "decoder.", "output_layer.")
_NUMBERED = re.compile(r"^(\d+)\.(.+)$")


@dataclass(frozen=True)
class _Entry:
    key: str  # dist_checkpointing key
    shape: tuple[int, ...]  # global shape of the stored tensor
    dtype: torch.dtype
    layer: int | None  # index into the leading (stacked layers) dimension, if stacked


class MegatronCheckpoint:
    """The model tensors of one checkpoint, by global megatron name (see model/sharding.py)."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_checkpoint(path)
        problems = verify_local(str(self.path))
        if problems:
            raise CheckpointError(describe(str(self.path), problems))
        ensure_process_group()
        self.common: dict[str, Any] = read_common(str(self.path))
        if not isinstance(self.common.get("config"), dict) or "model" not in self.common["config"]:
            raise ValueError(
                f"{self.path}: the checkpoint holds no run config with a `model` section"
            )
        self.model: ModelConfig = model_config_from_dict(
            self.common["config"]["model"], f"{self.path} (config.model)"
        )
        metadata = dist_checkpointing.load_tensors_metadata(str(self.path))
        self._entries = self._index(metadata)
        layers = self.layer_names()
        if len(layers) != self.model.num_layers or any(not names for names in layers):
            raise ValueError(
                f"{self.path}: tensors for {sum(bool(n) for n in layers)} decoder layers found, "
                f"config.model.num_layers={self.model.num_layers}"
            )

    @property
    def config(self) -> dict[str, Any]:
        return self.common["config"]

    def _index(self, metadata: dict[str, Any]) -> dict[str, _Entry]:
        """Global name -> where it is stored.

        Keys are the GPTModel's own names, possibly under a wrapper's prefix
        (checkpoints saved from DDP-wrapped chunks have `module.`).
        """
        candidates = [
            k for k in metadata if k.endswith(EMBEDDING) and not k.startswith("optimizer.")
        ]
        if not candidates:
            raise ValueError(f"{self.path}: no {EMBEDDING} tensor; not a GPT model checkpoint")
        prefix = min(candidates, key=len)[: -len(EMBEDDING)]
        entries: dict[str, _Entry] = {}
        for key, tensor in metadata.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if not name.startswith(_TOP_LEVEL) or "_extra_state" in name:
                continue
            shape, dtype = tuple(tensor.global_shape), tensor.dtype
            if name.startswith(_LAYERS) and not _NUMBERED.match(name[len(_LAYERS) :]):
                if shape[0] != self.model.num_layers:
                    raise ValueError(
                        f"{self.path}: stacked tensor {key} has {shape[0]} layers, "
                        f"config.model.num_layers={self.model.num_layers}"
                    )
                suffix = name[len(_LAYERS) :]
                for layer in range(shape[0]):
                    entries[f"{_LAYERS}{layer}.{suffix}"] = _Entry(key, shape, dtype, layer)
            else:
                entries[name] = _Entry(key, shape, dtype, None)
        for required in (EMBEDDING, FINAL_NORM, OUTPUT_LAYER):
            if required not in entries:
                raise ValueError(f"{self.path}: no {required} tensor in the checkpoint")
        return entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def layer_names(self) -> list[list[str]]:
        """The global names of each decoder layer's tensors."""
        layers: list[list[str]] = [[] for _ in range(self.model.num_layers)]
        for name in self._entries:
            if name.startswith(_LAYERS):
                layer = int(name[len(_LAYERS) :].split(".", 1)[0])
                if layer < len(layers):
                    layers[layer].append(name)
        return [sorted(names) for names in layers]

    def dtype(self) -> torch.dtype:
        return self._entries[EMBEDDING].dtype

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors, unsharded (one dist_checkpointing read for all of them)."""
        request = {}
        for name in names:
            if name not in self._entries:
                raise KeyError(f"{self.path}: no tensor {name!r} in the checkpoint")
            entry = self._entries[name]
            if entry.layer is None:
                data = torch.empty(entry.shape, dtype=entry.dtype)
                request[name] = ShardedTensor.from_rank_offsets(entry.key, data, replica_id=0)
            else:
                data = torch.empty((1, *entry.shape[1:]), dtype=entry.dtype)
                request[name] = ShardedTensor.from_rank_offsets(
                    entry.key, data, (0, entry.layer, entry.shape[0]), replica_id=0
                )
        # This process reads a part of the checkpoint on purpose, so megatron's
        # check that the ranks together read every shard does not apply.
        loaded = dist_checkpointing.load(request, str(self.path), validate_access_integrity=False)
        return {
            name: loaded[name][0] if self._entries[name].layer is not None else loaded[name]
            for name in names
        }

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every model tensor (the whole model in memory: for generation, not for export)."""
        return self.read(self.names())
