"""Global batches from a map-style dataset, split over data-parallel ranks.

Sample order is megatron's: step k consumes samples [k*G, (k+1)*G) of the
dataset (already shuffled by the dataset itself), and data-parallel rank r
takes the r-th contiguous slice of G/DP samples, cut into micro-batches.
Every rank of a model replica (TP/PP peers) reads the same samples, so no
broadcast is needed, and resuming at `consumed_samples` is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from chatbaker_megatron.platform import Platform

# Keys the training step consumes; anything else a dataset returns is dropped.
# chosen_mask and pair_index: preference pairs (data/datasets/preference.py).
BATCH_KEYS = (
    "tokens",
    "labels",
    "loss_mask",
    "position_ids",
    "cu_seqlens",
    "chosen_mask",
    "pair_index",
)


class MapDataset(Protocol):
    """What `global_batch` reads: a length and samples by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Mapping[str, Any]: ...


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "u":
            # Token ids are stored as uint16/uint32 on disk; torch wants signed ints.
            value = value.astype(np.int64)
        return torch.from_numpy(value)
    return value


def packed_row(cu_seqlens: np.ndarray) -> tuple[np.ndarray, int]:
    """[b, S+1] per-sample boundaries (each padded by repeating S) -> the boundaries of
    the b samples laid end to end as one row of b*S tokens, and its longest sequence.

    Done on the host, where the data is: on the device the de-duplication and the
    maximum would each cost a host sync per micro-batch.
    """
    b, width = cu_seqlens.shape
    shifted = (cu_seqlens.astype(np.int64) + np.arange(b)[:, None] * (width - 1)).reshape(-1)
    row = shifted[np.concatenate(([True], np.diff(shifted) != 0))]
    return row.astype(np.int32), int(np.diff(row).max())


def collate(samples: Sequence[Mapping[str, Any]], plat: Platform) -> dict[str, torch.Tensor]:
    """Stack samples into one micro-batch on the platform's device.

    Packed samples (with `cu_seqlens`) become one row's `cu_seqlens` [n+1] (int32,
    on the device) and `max_seqlen`, a 0-d tensor left on the host (see `packed_row`).
    """
    batch = {}
    for key in BATCH_KEYS:
        if key in samples[0] and key != "cu_seqlens":
            batch[key] = plat.from_host(torch.stack([_as_tensor(s[key]) for s in samples]))
    batch["tokens"] = batch["tokens"].long()
    batch["labels"] = batch["labels"].long()
    batch["position_ids"] = batch["position_ids"].long()
    batch["loss_mask"] = batch["loss_mask"].float()
    if "cu_seqlens" in samples[0]:
        row, longest = packed_row(np.stack([np.asarray(s["cu_seqlens"]) for s in samples]))
        batch["cu_seqlens"] = plat.from_host(torch.from_numpy(row))
        batch["max_seqlen"] = torch.tensor(longest)
    return batch


def global_batch(
    dataset: MapDataset,
    *,
    start: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp: int,
    dp_rank: int,
    plat: Platform,
) -> list[dict[str, torch.Tensor]]:
    """This DP rank's micro-batches of the global batch starting at sample `start`.

    Indices wrap around the dataset (epochs of a finite SFT set).
    """
    per_rank = global_batch_size // dp
    first = start + dp_rank * per_rank
    samples = [dataset[(first + i) % len(dataset)] for i in range(per_rank)]
    return [
        collate(samples[i : i + micro_batch_size], plat)
        for i in range(0, per_rank, micro_batch_size)
    ]
