"""Preference losses on sequence log-probs: DPO (sigmoid, label smoothing), IPO, RPO.

For a pair, with policy log-probs pi_c, pi_r and reference log-probs ref_c,
ref_r of the chosen and the rejected reply (summed over the reply's tokens):

- dpo: z = (pi_c - ref_c) - (pi_r - ref_r);
  loss = -(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z)
  (Rafailov et al. 2023; eps > 0 is conservative DPO, as TRL's label_smoothing);
- ipo: the same z on log-probs averaged over each reply's tokens;
  loss = (z - 1 / (2 beta))^2 (Azar et al. 2023, length-normalised as TRL does);
- rpo: dpo + alpha x the chosen replies' NLL per token over the global batch
  (Pang et al. 2024).

Rewards are beta x (pi - ref) on the summed log-probs for every loss (as TRL
reports them). A micro-batch reports the REPORT sums, which add up over
micro-batches and data-parallel ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The sums a micro-batch reports after (loss sum, pairs), in this order.
REPORT = (
    "rewards_chosen",
    "rewards_rejected",
    "reward_correct",
    "reward_margin",
    "logps_chosen",
    "logps_rejected",
    "logps_prefer_chosen",  # pairs whose chosen reply the policy finds likelier
    "nll_chosen",  # summed over the chosen replies' tokens
    "chosen_tokens",
)
REPORT_SIZE = 2 + len(REPORT)


@dataclass(frozen=True)
class PairLogps:
    """Per pair [b]: policy and reference log-probs of both replies, and the reply lengths."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def pair_losses(
    logps: PairLogps, *, loss: str, beta: float, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen reward, rejected reward) per pair, without RPO's NLL term."""
    chosen_ratio = logps.chosen - logps.reference_chosen
    rejected_ratio = logps.rejected - logps.reference_rejected
    if loss == "ipo":
        z = chosen_ratio / logps.chosen_tokens.clamp(min=1) - rejected_ratio / (
            logps.rejected_tokens.clamp(min=1)
        )
        losses = (z - 1 / (2 * beta)) ** 2
    elif loss in ("dpo", "rpo"):
        z = chosen_ratio - rejected_ratio
        losses = (
            -F.logsigmoid(beta * z) * (1 - label_smoothing)
            - F.logsigmoid(-beta * z) * label_smoothing
        )
    else:
        raise ValueError(f"train.preference.loss={loss!r}: expected dpo, ipo or rpo")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def report_sums(
    logps: PairLogps,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    nll_chosen: torch.Tensor,
) -> torch.Tensor:
    """The REPORT sums of one micro-batch, as one float tensor."""
    return torch.stack(
        [
            chosen_rewards.sum(),
            rejected_rewards.sum(),
            (chosen_rewards > rejected_rewards).float().sum(),
            (chosen_rewards - rejected_rewards).sum(),
            logps.chosen.detach().sum(),
            logps.rejected.detach().sum(),
            (logps.chosen > logps.rejected).float().sum(),
            nll_chosen.detach(),
            logps.chosen_tokens.sum(),
        ]
    ).float()


def figures(sums: tuple[float, ...], pairs: int, prefix: str = "") -> dict[str, float]:
    """Per-pair means of the REPORT sums over a global batch (or a validation run)."""
    values = dict(zip(REPORT, sums))
    per_pair = {
        "rewards_chosen": values["rewards_chosen"],
        "rewards_rejected": values["rewards_rejected"],
        "reward_accuracy": values["reward_correct"],
        "reward_margin": values["reward_margin"],
        "logps_chosen": values["logps_chosen"],
        "logps_rejected": values["logps_rejected"],
        "logps_accuracy": values["logps_prefer_chosen"],
    }
    result = {f"{prefix}{key}": value / pairs for key, value in per_pair.items()}
    tokens = values["chosen_tokens"]
    result[f"{prefix}nll_chosen"] = values["nll_chosen"] / tokens if tokens else float("nan")
    return result
