"""One forward pass for many sequences: a transformers causal LM over a left-padded KV cache.

Rows join and leave between steps (continuous batching). The sequences that
join at a step are prefilled together (left-padded to the longest, each with
its own positions and a causal mask hiding its padding), then their cache is
left-padded (or the batch's is) to a common length and stacked onto the
batch; a leaving row is dropped with the columns no remaining row needs. Each
row carries its true positions and an attention mask that hides its padding,
so a row's logits are those of the sequence decoded alone (tested against the
one-at-a-time Generator). A prefill always gets its causal mask; a decoding
step where no row has padding (one request alone, or rows of one length)
needs none: its one query sees every cached column.

Everything runs under torch.inference_mode: no autograd bookkeeping on any
tensor, which trims the per-operator cost that dominates a small model's
step (the cache is only ever read by later steps, never differentiated).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from chatbaker_megatron.inference.backends import cache_keyword

if TYPE_CHECKING:  # imported when a decoder is built (transformers takes seconds to import)
    from transformers import DynamicCache, LlamaForCausalLM


def _to(mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if mask is None else mask.to(device)


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """[batch, heads, length, dim] with `columns` zero positions prepended."""
    return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor


class BatchedDecoder:
    """The KV cache of the running rows and their decoding step."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        # transformers' DynamicCache of the rows, grown in place by each step; rebuilt
        # (padded, stacked or sliced) only when rows join or leave.
        self.cache: DynamicCache | None = None
        self.pad: list[int] = []  # leading padding columns of each row
        self.lengths: list[int] = []  # real tokens cached for each row (= its next position)
        self.layer_cache_keyword = cache_keyword(model.model.layers[0])

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def columns(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0

    def _layers(self, cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _set_layers(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(ddp_cache_data=layers) if layers else None

    def _forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache,
        keep: int = 1,
    ) -> torch.Tensor:
        """Logits [rows, keep, vocab] of the last `keep` positions (0: all).

        transformers' own modules in the order LlamaForCausalLM.forward runs them
        (embedding, rotary, decoder layers, norm, head), called directly: its decorators
        (keyword deprecation, config defaults, output capture) and its mask building
        cost 13% of a small model's decode step, and the mask is built here anyway.
        Tested against the model's own forward (tests/serve/test_batching.py).
        """
        body = self.model.model
        hidden = body.embed_tokens(tokens)
        rotary = body.rotary_emb(hidden, position_ids=positions)
        for layer in body.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                position_embeddings=rotary,
                use_cache=True,
                **{self.layer_cache_keyword: cache},
            )
        return self.model.lm_head(body.norm(hidden[:, -keep:] if keep else hidden))

    @torch.inference_mode()
    def add(self, prompts: list[list[int]], *, every_position: bool = False) -> torch.Tensor:
        """Prefill `prompts` together as new last rows; the logits [len(prompts), vocab]
        that follow each, or with `every_position` those after every position
        [len(prompts), longest, vocab], each row's left-padded like its prompt."""
        from transformers import DynamicCache

        width = max(len(prompt) for prompt in prompts)
        pads = [width - len(prompt) for prompt in prompts]
        # Left-padded with token 0: the padding is masked out, its value never matters.
        tokens = torch.tensor([[0] * pad + prompt for pad, prompt in zip(pads, prompts)])
        pad = torch.tensor(pads)[:, None]
        positions = (torch.arange(width)[None] - pad).clamp(min=0)
        mask = None  # one token: it sees itself
        if width > 1:  # given whole: the decoder layers take no mask of their own
            query = torch.arange(width)
            causal = query[None, :] <= query[:, None]  # [query, key]
            own = query >= pad[:, :, None]  # [rows, 1, key]: not the row's padding
            # A padding position sees itself: a query that sees nothing would be NaN,
            # and a NaN key or value poisons every row that masks it out.
            mask = ((causal & own) | torch.eye(width, dtype=torch.bool))[:, None]
        cache = DynamicCache()
        logits = self._forward(
            tokens.to(self.device),
            positions.to(self.device),
            _to(mask, self.device),
            cache,
            keep=0 if every_position else 1,
        )
        common = max(self.columns, width)
        grow, shift = common - self.columns, common - width
        self.pad = [p + grow for p in self.pad] + [p + shift for p in pads]
        self.lengths += [len(prompt) for prompt in prompts]
        if self.cache is None:
            self.cache = cache
        else:
            self._set_layers(
                [
                    (
                        torch.cat([_left_pad(k, grow), _left_pad(new_k, shift)]),
                        torch.cat([_left_pad(v, grow), _left_pad(new_v, shift)]),
                    )
                    for (k, v), (new_k, new_v) in zip(self._layers(self.cache), self._layers(cache))
                ]
            )
        return logits if every_position else logits[:, -1]

    @torch.inference_mode()
    def remove(self, rows: list[int]) -> None:
        """Drop these rows, and the leading columns that only they needed."""
        if not rows:
            return
        gone = set(rows)
        keep = [i for i in range(self.rows) if i not in gone]
        self.pad = [self.pad[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
        if not keep:
            self.cache = None
            return
        trim = min(self.pad)
        self.pad = [p - trim for p in self.pad]
        index = torch.tensor(keep, device=self.device)
        self._set_layers(
            [(k[index, :, trim:], v[index, :, trim:]) for k, v in self._layers(self.cache)]
        )

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Append one token to every row (in row order); logits [rows, vocab] after each."""
        if len(tokens) != self.rows:
            raise ValueError(f"{len(tokens)} tokens for {self.rows} rows")
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        positions = torch.tensor(self.lengths, device=self.device)[:, None]
        mask = None  # no padding: every row attends to every column
        if any(self.pad):
            columns = torch.arange(self.columns + 1, device=self.device)
            # [rows, heads=1, queries=1, columns], True = attend: given whole, transformers
            # uses it as it is instead of building it from a 2-D padding mask at every step.
            mask = (columns >= torch.tensor(self.pad, device=self.device)[:, None])[:, None, None]
        logits = self._forward(ids, positions, mask, self.cache)[:, -1]
        self.lengths = [n + 1 for n in self.lengths]
        return logits
