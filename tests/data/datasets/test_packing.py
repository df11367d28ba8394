"""Best-fit-decreasing packing: every item once, never over capacity, >= 95% on realistic lengths."""

import numpy as np
import pytest

from chatbaker_megatron.data.datasets.packing import (
    one_per_bin,
    pack_best_fit_decreasing,
    packing_efficiency,
)


def sharegpt_like_lengths(count: int, capacity: int, seed: int = 0) -> np.ndarray:
    """Conversation lengths shaped like ShareGPT's: log-normal, median ~350 tokens, long tail cut at capacity."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(350), 0.9, count).astype(np.int64), 16, capacity)


def check_valid(packing, lengths, capacity):
    assert sorted(packing.items.tolist()) == list(range(len(lengths)))  # each item exactly once
    for b in range(len(packing)):
        assert 0 < lengths[packing.bin(b)].sum() <= capacity


@pytest.mark.parametrize("capacity", [2048, 4096])
def test_realistic_mix_packs_above_95_percent(capacity):
    lengths = sharegpt_like_lengths(5000, capacity)
    packing = pack_best_fit_decreasing(lengths, capacity)
    check_valid(packing, lengths, capacity)
    efficiency = packing_efficiency(lengths, packing)
    padded = packing_efficiency(lengths, one_per_bin(len(lengths), capacity))
    assert efficiency >= 0.95
    assert padded < 0.3  # pad-to-max wastes most of every sequence on this mix
    assert efficiency == lengths.sum() / (len(packing) * capacity)


def test_best_fit_on_a_hand_checked_example():
    # 6 opens bin 0 (room 4); 5 opens bin 1 (room 5); 4 fits bin 0 exactly; 3 and 2 fill bin 1.
    packing = pack_best_fit_decreasing(np.array([6, 5, 4, 3, 2]), 10)
    assert [packing.bin(b).tolist() for b in range(len(packing))] == [[0, 2], [1, 3, 4]]
    assert packing_efficiency(np.array([6, 5, 4, 3, 2]), packing) == 1.0


def test_packing_is_deterministic_and_handles_edges():
    lengths = sharegpt_like_lengths(1000, 1024, seed=3)
    a, b = pack_best_fit_decreasing(lengths, 1024), pack_best_fit_decreasing(lengths, 1024)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.bin_offsets, b.bin_offsets)
    full = pack_best_fit_decreasing(np.array([8, 8, 8]), 8)
    assert len(full) == 3
    assert len(pack_best_fit_decreasing(np.array([], dtype=np.int64), 8)) == 0
    with pytest.raises(ValueError, match=r"item lengths must be in 1\.\.8"):
        pack_best_fit_decreasing(np.array([3, 9]), 8)
