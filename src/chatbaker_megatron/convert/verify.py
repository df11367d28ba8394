"""`chatbaker export-hf --verify`: our model's logits vs transformers' on the exported folder.

Both run in fp32 in this process on the same token ids (a Korean-English
sentence by default): our GPTModel built at TP=1, PP=1 from the checkpoint,
and `LlamaForCausalLM.from_pretrained` on the export. This loads the whole
model twice, so it is an opt-in check, not part of the streaming export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

VERIFY_TEXT = (
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다. "
    "Python is an easy to learn, powerful programming language."
)


@dataclass(frozen=True)
class LogitCheck:
    tokens: int
    max_abs_diff: float
    max_abs_logit: float


def compare_logits(
    checkpoint: str | Path,
    hf_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    text: str = VERIFY_TEXT,
) -> LogitCheck:
    from transformers import LlamaForCausalLM

    from chatbaker_megatron.inference.backends import load_megatron_backend

    # fp32 on every device: the check compares numerics, not serving speed.
    ours = load_megatron_backend(checkpoint, tokenizer_dir, dtype=torch.float32)
    ids = ours.tokenizer.encode(text)[: ours.max_length]
    tokens = torch.tensor([ids], device=ours.device)
    positions = torch.arange(len(ids), device=ours.device)[None]
    theirs = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    # transformers' `to` is a functools.wraps wrapper: typeshed's type of it drops the bound self.
    theirs = theirs.to(ours.device)  # type: ignore[arg-type]
    with torch.no_grad():
        # No inference context: a plain full-sequence forward, as in training.
        our_logits = ours.model(tokens, positions, None)[0, :, : ours.tokenizer.vocab_size].float()
        their_logits = theirs.eval()(tokens).logits[0].float()
    return LogitCheck(
        tokens=len(ids),
        max_abs_diff=(our_logits - their_logits).abs().max().item(),
        max_abs_logit=their_logits.abs().max().item(),
    )
