"""Next-token choice from logits, shared by every backend (megatron checkpoint, HF folder).

Order, as in transformers' logits processors: repetition penalty, then
greedy argmax or temperature -> top-k -> top-p -> a draw from the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    greedy: bool = False
    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 0.9  # 1.0 = off
    # > 1 discourages tokens already in the context (CTRL's penalty); 1.0 = off.
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("temperature", self.temperature > 0, "> 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
        )
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"--{key.replace('_', '-')}={getattr(self, key)}: expected {expected}"
                )


def apply_repetition_penalty(
    logits: torch.Tensor, context: list[int], penalty: float
) -> torch.Tensor:
    """Divide positive (multiply negative) logits of tokens seen in `context` by `penalty`."""
    if penalty == 1.0 or not context:
        return logits
    logits = logits.clone()
    seen = torch.tensor(sorted(set(context)), dtype=torch.long, device=logits.device)
    values = logits[seen]
    logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """-inf for every logit below the k-th largest (ties at the k-th are kept)."""
    if k <= 0 or k >= logits.numel():
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens before it already reach p.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token(
    logits: torch.Tensor,
    context: list[int],
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
) -> int:
    """The next token id from one position's logits [vocab].

    The math runs in fp32 on CPU whatever the model's dtype and device, so a
    seeded draw is the same for every backend.
    """
    logits = apply_repetition_penalty(logits.float().cpu(), context, cfg.repetition_penalty)
    if cfg.greedy:
        return int(torch.argmax(logits))
    logits = filter_top_p(filter_top_k(logits / cfg.temperature, cfg.top_k), cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
