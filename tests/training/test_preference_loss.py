"""Conservative DPO (label smoothing), which TRL 1.x no longer computes, against its formula."""

from __future__ import annotations

import math

import pytest
import torch

from chatbaker_megatron.training.preference_loss import PairLogps, pair_losses


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_is_the_conservative_dpo_formula(eps):
    logps = PairLogps(
        chosen=torch.tensor([-10.0, -20.0]),
        rejected=torch.tensor([-12.0, -15.0]),
        reference_chosen=torch.tensor([-11.0, -18.0]),
        reference_rejected=torch.tensor([-11.5, -16.0]),
        chosen_tokens=torch.tensor([5.0, 8.0]),
        rejected_tokens=torch.tensor([6.0, 4.0]),
    )
    beta = 0.5
    losses, chosen_rewards, rejected_rewards = pair_losses(
        logps, loss="dpo", beta=beta, label_smoothing=eps
    )
    for i, (pc, pr, rc, rr) in enumerate([(-10, -12, -11, -11.5), (-20, -15, -18, -16)]):
        z = beta * ((pc - rc) - (pr - rr))
        p = 1 / (1 + math.exp(-z))  # the model's probability that the label is right
        expected = -(1 - eps) * math.log(p) - eps * math.log(1 - p)
        assert losses[i].item() == pytest.approx(expected, rel=1e-6)
        assert chosen_rewards[i].item() == pytest.approx(beta * (pc - rc))
        assert rejected_rewards[i].item() == pytest.approx(beta * (pr - rr))
