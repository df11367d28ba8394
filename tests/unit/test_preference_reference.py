"""The saved reference log-probs: read back exactly, refused for another setup."""

from __future__ import annotations

import pytest
import torch

from chatbaker_megatron.platform import detect
from chatbaker_megatron.training.preference import load_reference, save_reference

IDENTITY = {"init_from": "runs/sft/checkpoints", "seq_length": 384, "valid_pairs": [3, 7]}


def test_reference_round_trip_is_exact_and_checked(tmp_path):
    plat = detect()
    assert load_reference(str(tmp_path), IDENTITY, plat) is None  # a fresh run: pre-pass
    table = torch.randn(10, 2, dtype=torch.float64)
    save_reference(str(tmp_path), IDENTITY, table)
    assert torch.equal(load_reference(str(tmp_path), IDENTITY, plat).cpu(), table)
    changed = {**IDENTITY, "seq_length": 512}
    with pytest.raises(ValueError, match=r"seq_length: 384 -> 512"):
        load_reference(str(tmp_path), changed, plat)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "reference_logps.json",
        "reference_logps.npy",
    ]
