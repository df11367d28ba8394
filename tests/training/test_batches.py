"""Micro-batches of packed samples: the row's boundaries are computed on the host."""

from __future__ import annotations

import numpy as np
import torch

from chatbaker_megatron.platform import detect
from chatbaker_megatron.training.batches import collate, packed_row


def test_packed_row_joins_the_samples_boundaries():
    # Two samples of S=8 tokens: [3, 5] and [8]; boundaries padded by repeating S.
    per_sample = np.array([[0, 3, 8, 8, 8, 8, 8, 8, 8], [0, 8, 8, 8, 8, 8, 8, 8, 8]], np.int32)
    row, longest = packed_row(per_sample)
    # Independently: shift each sample by its offset in the row and drop repeats (torch).
    shifted = torch.from_numpy(per_sample) + torch.arange(2, dtype=torch.int32)[:, None] * 8
    expected = torch.unique_consecutive(shifted.reshape(-1))
    assert row.tolist() == expected.tolist() == [0, 3, 8, 16]
    assert row.dtype == np.int32 and longest == 8 == int(torch.diff(expected).max())


def test_collate_keeps_max_seqlen_on_the_host():
    samples = [
        {
            "tokens": np.arange(4, dtype=np.uint16),
            "labels": np.arange(4, dtype=np.uint16),
            "loss_mask": np.ones(4, np.float32),
            "position_ids": np.array([0, 1, 0, 1]),
            "cu_seqlens": np.array([0, 2, 4, 4, 4], np.int32),
        }
    ] * 2
    batch = collate(samples, detect())
    assert batch["cu_seqlens"].tolist() == [0, 2, 4, 6, 8]
    assert batch["max_seqlen"].device.type == "cpu" and int(batch["max_seqlen"]) == 2
