"""Sampling: each filter on hand-made logits, and seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

from chatbaker_megatron.inference.sampling import (
    SamplingConfig,
    apply_openai_adjustments,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    next_token,
    next_tokens,
)

LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])


def test_top_k_keeps_the_k_largest():
    kept = filter_top_k(LOGITS[None], [2])[0]
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]
    assert torch.equal(filter_top_k(LOGITS[None], [0])[0], LOGITS)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, dim=-1)  # 0.61, 0.22, 0.14, ...
    assert probs[0] < 0.7 < probs[0] + probs[1]
    kept = filter_top_p(LOGITS[None], [0.7])[0]
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]
    # However small p is, the most likely token stays.
    assert torch.isfinite(filter_top_p(LOGITS[None], [0.01])[0]).tolist() == [
        True,
        False,
        False,
        False,
        False,
    ]


def test_repetition_penalty_pushes_seen_tokens_down():
    penalized = apply_repetition_penalty(LOGITS[None], [[0, 3, 3]], [2.0])[0]
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


def test_each_row_of_a_batch_draws_as_if_alone():
    """The server samples its running requests together; a seed must not see the others."""
    torch.manual_seed(0)
    logits = torch.randn(6, 300) * 3
    contexts = [[1, 2, 2], [], [5, 7], [9], [3], [250, 4]]
    configs = [
        SamplingConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.3, seed=1),
        SamplingConfig(temperature=1.0, top_p=1.0, seed=2),
        SamplingConfig(greedy=True, repetition_penalty=1.2),
        SamplingConfig(temperature=1.5, top_k=5, top_p=1.0, seed=3),
        SamplingConfig(temperature=0.3, top_k=40, top_p=0.5, seed=4),
        SamplingConfig(temperature=2.0, top_p=0.95, repetition_penalty=0.8, seed=5),
    ]
    for step in range(20):
        step_logits = logits.roll(step, dims=-1)
        alone = [
            next_token(
                step_logits[r], contexts[r], cfg, torch.Generator().manual_seed(step * 10 + r)
            )
            for r, cfg in enumerate(configs)
        ]
        generators = [torch.Generator().manual_seed(step * 10 + r) for r in range(len(configs))]
        assert next_tokens(step_logits, contexts, configs, generators) == alone
    # Sampled rows never pick a token the filters removed.
    kept = torch.isfinite(filter_top_k(logits[3:4] / 1.5, [5])[0])
    draws = torch.Generator().manual_seed(0)
    picks = {next_token(logits[3], [], configs[3], draws) for _ in range(300)}
    assert picks <= set(kept.nonzero().flatten().tolist()) and len(picks) > 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("temperature", 0.0), ("top_p", 0.0), ("top_k", -1), ("max_new_tokens", 0)],
)
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=f"--{key.replace('_', '-')}={value}"):
        SamplingConfig(**{key: value})


def test_openai_penalties_and_logit_bias_follow_openais_formula():
    """logit - count * frequency_penalty - (count > 0) * presence_penalty + bias, per row,
    counting only the generated tokens."""
    configs = [
        SamplingConfig(presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((4, 3.0),)),
        SamplingConfig(),
    ]
    generated = [[1, 1, 2], [1]]
    out = apply_openai_adjustments(LOGITS.repeat(2, 1), generated, configs)
    expected = LOGITS.clone()
    expected[1] -= 2 * 0.25 + 0.5
    expected[2] -= 1 * 0.25 + 0.5
    expected[4] += 3.0
    assert torch.allclose(out[0], expected) and torch.equal(out[1], LOGITS)
    # Greedy with a penalty large enough steers off the repeated argmax.
    strong = SamplingConfig(greedy=True, frequency_penalty=2.0)
    assert next_tokens(LOGITS[None], [[9, 0]], [strong], [None], [[0]]) == [1]
    assert next_tokens(LOGITS[None], [[9, 0]], [strong], [None]) == [0]  # nothing generated
    with pytest.raises(ValueError, match="--presence-penalty=3"):
        SamplingConfig(presence_penalty=3)
