"""Next-token choice from logits, shared by every backend (megatron checkpoint, HF folder).

Order: OpenAI's logit bias and presence/frequency penalties (on the tokens
generated so far), then, as in transformers' logits processors, the
repetition penalty, then greedy argmax or temperature -> top-k -> top-p -> a
draw from the rest.
Everything works on a batch of rows [rows, vocab], each with its own
settings (the server samples all its running requests at once); the
one-at-a-time Generator samples a batch of one with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    # OpenAI's penalties: minus count * frequency_penalty, minus presence_penalty once, for
    # every token already generated (the prompt not counted); 0 = off.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # OpenAI's logit_bias: (token id, bias added to its logit) pairs.
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        checks = (
            ("temperature", self.temperature > 0, "> 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
        )
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"--{key.replace('_', '-')}={getattr(self, key)}: expected {expected}"
                )


def apply_repetition_penalty(
    logits: torch.Tensor, contexts: Sequence[Sequence[int]], penalties: Sequence[float]
) -> torch.Tensor:
    """Per row of logits [rows, vocab]: divide positive (multiply negative) logits of the
    tokens seen in its context by its penalty."""
    rows = [r for r, penalty in enumerate(penalties) if penalty != 1.0 and contexts[r]]
    if not rows:
        return logits
    seen_rows: list[int] = []
    seen_tokens: list[int] = []
    for r in rows:
        tokens = set(contexts[r])
        seen_rows += [r] * len(tokens)
        seen_tokens += tokens
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[seen_rows, seen_tokens] = True
    penalty = torch.tensor(penalties, dtype=logits.dtype, device=logits.device)[:, None]
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def apply_openai_adjustments(
    logits: torch.Tensor,
    generated: Sequence[Sequence[int]],
    configs: Sequence[SamplingConfig],
) -> torch.Tensor:
    """Per row of logits [rows, vocab]: add its logit_bias, subtract its presence and
    frequency penalties for the tokens it generated (OpenAI's formula)."""
    rows = [
        r
        for r, c in enumerate(configs)
        if c.logit_bias or (generated[r] and (c.presence_penalty or c.frequency_penalty))
    ]
    if not rows:
        return logits
    logits = logits.clone()
    for r in rows:
        config = configs[r]
        for token, bias in config.logit_bias:
            logits[r, token] += bias
        if generated[r] and (config.presence_penalty or config.frequency_penalty):
            counts = torch.bincount(
                torch.tensor(generated[r], dtype=torch.long), minlength=logits.shape[-1]
            ).to(logits.dtype)
            logits[r] -= counts * config.frequency_penalty
            logits[r] -= (counts > 0).to(logits.dtype) * config.presence_penalty
    return logits


def filter_top_k(logits: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Per row of logits [rows, vocab]: -inf below its k-th largest (ties kept; k = 0: off)."""
    vocab = logits.shape[-1]
    on = [0 < k < vocab for k in ks]
    if not any(on):
        return logits
    top = torch.topk(logits, max(k for k, o in zip(ks, on) if o), dim=-1).values
    kth = top.gather(-1, torch.tensor([k - 1 if o else 0 for k, o in zip(ks, on)])[:, None])
    kth = kth.masked_fill(~torch.tensor(on)[:, None], float("-inf"))
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, ps: Sequence[float]) -> torch.Tensor:
    """Per row of logits [rows, vocab]: keep the smallest set of most likely tokens whose
    probability reaches its p (at least one; p = 1: off)."""
    if all(p >= 1.0 for p in ps):
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens before it already reach p.
    before = torch.cumsum(probs, dim=-1) - probs
    limit = torch.tensor([p if p < 1.0 else float("inf") for p in ps])[:, None]
    drop_sorted = before >= limit
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(
    logits: torch.Tensor,
    contexts: Sequence[Sequence[int]],
    configs: Sequence[SamplingConfig],
    generators: Sequence[torch.Generator | None],
    generated: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """The next token of every row of logits [rows, vocab], row r with its own context,
    settings and generator (`generated`: the tail of each context the model wrote,
    for the presence/frequency penalties; default none).

    A row's token does not depend on the other rows (tested), so a seeded request
    gets the same reply alone or batched. Every operation works row by row, and
    each sampled row draws ONE uniform number from its generator and inverts the
    cumulative distribution of what the filters kept: the same draw as a
    multinomial, but one cheap random number per row instead of one per
    vocabulary entry, and one batched operation for all rows. The math runs in
    fp32 (the cumulative sum in fp64) on CPU whatever the model's dtype and
    device, so a seeded draw is the same for every backend.
    """
    logits = logits.float().cpu()
    if generated is None:
        generated = [()] * len(configs)
    logits = apply_openai_adjustments(logits, generated, configs)
    logits = apply_repetition_penalty(logits, contexts, [c.repetition_penalty for c in configs])
    greedy = [c.greedy for c in configs]
    if all(greedy):
        return logits.argmax(dim=-1).tolist()
    temperature = torch.tensor([c.temperature for c in configs])[:, None]
    kept = filter_top_k(logits / temperature, [c.top_k for c in configs])
    kept = filter_top_p(kept, [c.top_p for c in configs])
    cdf = torch.cumsum(torch.softmax(kept, dim=-1), dim=-1, dtype=torch.float64)
    total = cdf[:, -1]
    uniform = torch.cat(
        [
            torch.rand(1, dtype=torch.float64, generator=g)
            for g, gr in zip(generators, greedy)
            if not gr
        ]
    )
    sampled = [r for r, gr in enumerate(greedy) if not gr]
    # Strictly below the total, so the first entry above it is a token of non-zero probability.
    target = torch.minimum(
        uniform * total[sampled], torch.nextafter(total[sampled], total.new_zeros(()))
    )
    drawn = torch.searchsorted(cdf[sampled], target[:, None], right=True)[:, 0].tolist()
    if not any(greedy):
        return drawn
    argmax = logits.argmax(dim=-1).tolist()
    draws = iter(drawn)
    return [argmax[r] if gr else next(draws) for r, gr in enumerate(greedy)]


def next_token(
    logits: torch.Tensor,
    context: Sequence[int],
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
) -> int:
    """The next token id from one position's logits [vocab] (`next_tokens` on one row)."""
    return next_tokens(logits[None], [context], [cfg], [generator])[0]
