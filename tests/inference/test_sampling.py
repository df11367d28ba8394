"""Sampling: each filter on hand-made logits, and seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

from chatbaker_megatron.inference.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    next_token,
)

LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])


def test_top_k_keeps_the_k_largest():
    kept = filter_top_k(LOGITS, 2)
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]
    assert torch.equal(filter_top_k(LOGITS, 0), LOGITS)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, dim=-1)  # 0.61, 0.22, 0.14, ...
    assert probs[0] < 0.7 < probs[0] + probs[1]
    kept = filter_top_p(LOGITS, 0.7)
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]
    # However small p is, the most likely token stays.
    assert torch.isfinite(filter_top_p(LOGITS, 0.01)).tolist() == [True, False, False, False, False]


def test_repetition_penalty_pushes_seen_tokens_down():
    penalized = apply_repetition_penalty(LOGITS, [0, 3, 3], 2.0)
    assert penalized.tolist() == [1.0, 1.0, 0.5, -2.0, -3.0]
    assert next_token(LOGITS, [0], SamplingConfig(greedy=True, repetition_penalty=4.0)) == 1


def test_temperature_sharpens_and_draws_follow_the_distribution():
    cfg = SamplingConfig(temperature=0.5, top_p=1.0, max_new_tokens=1)
    draws = torch.Generator().manual_seed(0)
    counts = torch.bincount(
        torch.tensor([next_token(LOGITS, [], cfg, draws) for _ in range(2000)]), minlength=5
    )
    expected = torch.softmax(LOGITS / 0.5, dim=-1)
    assert torch.allclose(counts / 2000, expected, atol=0.03)
    assert math.isclose(expected[0].item(), 0.842, abs_tol=1e-3)  # e^4 / sum e^(2x)


def test_seeded_draws_repeat():
    cfg = SamplingConfig(top_k=3, seed=5)
    first = [next_token(LOGITS, [], cfg, torch.Generator().manual_seed(5)) for _ in range(3)]
    again = [next_token(LOGITS, [], cfg, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert first == again


@pytest.mark.parametrize(
    ("key", "value"),
    [("temperature", 0.0), ("top_p", 0.0), ("top_k", -1), ("max_new_tokens", 0)],
)
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=f"--{key.replace('_', '-')}={value}"):
        SamplingConfig(**{key: value})
