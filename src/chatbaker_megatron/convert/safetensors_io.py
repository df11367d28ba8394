"""Hugging Face weight files: write bounded-size safetensors shards, read tensors lazily.

Writing keeps at most one shard's tensors in memory; reading opens a shard
(memory-mapped by safetensors) and copies out one tensor at a time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from chatbaker_megatron.atomic_files import publish

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}
_UNITS |= {"T": 10**12, "TB": 10**12}


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1000000' -> bytes (decimal units, as transformers uses)."""
    match = _SIZE.match(text)
    if not match or int(float(match.group(1)) * _UNITS[match.group(2).upper()]) <= 0:
        raise ValueError(
            f"shard size {text!r}: expected a positive size such as 2GB, 500MB or 1000000"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class ShardWriter:
    """Collects tensors into shards of at most `max_shard_bytes` (a bigger tensor gets its own).

    Shards are named model-0000i-of-0000N.safetensors once N is known, with
    model.safetensors.index.json mapping every tensor to its shard, as
    transformers writes sharded checkpoints.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in shard for shard in self._shards):
            raise ValueError(f"tensor {name!r} written twice")
        size = _nbytes(tensor)
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _partial(self, index: int) -> Path:
        return self.out_dir / f".shard-{index:05d}.partial"

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self._pending, str(self._partial(len(self._shards))), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard and the index; returns the shard file names."""
        if self._pending:
            self._flush()
        count = len(self._shards)
        names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        publish(
            *((str(self._partial(i)), str(self.out_dir / name)) for i, name in enumerate(names))
        )
        weight_map = {}
        for file_name, tensors in zip(names, self._shards):
            weight_map.update(dict.fromkeys(tensors, file_name))
        index_data = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (self.out_dir / INDEX_FILE).write_text(
            json.dumps(index_data, indent=2) + "\n", encoding="utf-8"
        )
        return names


class HFWeights:
    """Tensors of a Hugging Face folder (sharded with an index, or one model.safetensors)."""

    def __init__(self, hf_dir: Path) -> None:
        self.hf_dir = hf_dir
        index, single = hf_dir / INDEX_FILE, hf_dir / SINGLE_FILE
        if index.is_file():
            data = json.loads(index.read_text(encoding="utf-8"))
            if "weight_map" not in data:
                raise ValueError(f"{index}: no weight_map")
            self.weight_map: dict[str, str] = data["weight_map"]
        elif single.is_file():
            from safetensors import safe_open

            with safe_open(str(single), framework="pt") as f:
                self.weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            found = sorted(p.name for p in hf_dir.glob("*.bin"))
            hint = (
                f" (found {', '.join(found)}: convert them to safetensors first)" if found else ""
            )
            raise FileNotFoundError(f"{hf_dir}: no {INDEX_FILE} or {SINGLE_FILE}{hint}")
        self._open: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.weight_map:
            raise KeyError(f"{self.hf_dir}: tensor {name!r} is not in the checkpoint")
        file_name = self.weight_map[name]
        if file_name not in self._open:
            path = self.hf_dir / file_name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in the index for {name!r} but missing")
            self._open[file_name] = safe_open(str(path), framework="pt")
        return self._open[file_name].get_tensor(name)  # type: ignore[attr-defined]
