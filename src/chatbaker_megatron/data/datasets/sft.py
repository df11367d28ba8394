"""SFT data: preprocessed conversations -> packed (or padded) training sequences.

`chatbaker preprocess --format sft` stores every conversation as one megatron
document of two sequences: the token ids and the 0/1 target flags (1 on the
tokens of assistant replies, each closing eos included). Here every rank
reads the lengths, cuts each conversation to the whole turns that fit in
seq_length, splits train/valid by the seed and packs best-fit-decreasing;
all of it deterministic, so no cache or rank-0 coordination is needed.

A sample (all of length S = seq_length):
- tokens [S] int64, pad id after the last conversation;
- labels [S] int64: tokens[i + 1] inside a conversation, else the pad id;
- loss_mask [S] float32: 1 where labels[i] is an assistant target; 0 on the
  last token of every conversation, so no label points across a boundary;
- position_ids [S] int64, restarting at 0 with every conversation (and the
  padding tail);
- with packing: cu_seqlens [S + 1] int32, the segment boundaries
  [0, l1, l1 + l2, ..., S] (the padding tail is its own final segment),
  right-filled with S so samples stack into a batch; and max_seqlen, a
  0-d int32 tensor, the longest segment (megatron's PackedSeqParams wants it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from chatbaker_megatron.config.data import resolve_path
from chatbaker_megatron.data.datasets.integrity import check_dataset
from chatbaker_megatron.data.datasets.packing import (
    Packing,
    fit_whole_turns,
    one_per_bin,
    pack_best_fit_decreasing,
    packing_efficiency,
)
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer


class SFTDataset(torch.utils.data.Dataset):
    """`epochs` passes over the bins of a set of conversations, reshuffled every pass."""

    def __init__(
        self,
        store: IndexedDataset,
        conversations: np.ndarray,
        lengths: np.ndarray,
        *,
        seq_length: int,
        pad_id: int,
        packing: bool,
        seed: int,
        epochs: int,
    ) -> None:
        self.store = store
        self.conversations = conversations
        self.lengths = lengths  # of every conversation in the store, after truncation
        self.seq_length, self.pad_id, self.packed = seq_length, pad_id, packing
        self.seed, self.epochs = seed, epochs
        own = lengths[conversations]
        self.bins: Packing = (
            pack_best_fit_decreasing(own, seq_length)
            if packing
            else one_per_bin(len(conversations), seq_length)
        )
        self.efficiency = packing_efficiency(own, self.bins)
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.bins) * self.epochs

    def _bin_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(len(self.bins)))
        return self._order[1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        epoch, position = divmod(index, len(self.bins))
        members = self.conversations[self.bins.bin(int(self._bin_order(epoch)[position]))]
        return self.sample(members)

    def sample(self, members: np.ndarray) -> dict[str, torch.Tensor]:
        """The training sequence made of the given conversations (store indices), in order."""
        size = self.seq_length
        tokens = np.full(size, self.pad_id, dtype=np.int64)
        labels = np.full(size, self.pad_id, dtype=np.int64)
        loss_mask = np.zeros(size, dtype=np.float32)
        position_ids = np.zeros(size, dtype=np.int64)
        bounds = [0]
        for conversation in members.tolist():
            length = int(self.lengths[conversation])
            start = bounds[-1]
            ids = self.store[2 * conversation][:length]
            targets = self.store[2 * conversation + 1][:length]
            tokens[start : start + length] = ids
            labels[start : start + length - 1] = ids[1:]
            loss_mask[start : start + length - 1] = targets[1:]
            position_ids[start : start + length] = np.arange(length)
            bounds.append(start + length)
        if bounds[-1] < size:
            position_ids[bounds[-1] :] = np.arange(size - bounds[-1])
            bounds.append(size)
        sample = {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(position_ids),
        }
        if self.packed:
            cu_seqlens = np.full(size + 1, size, dtype=np.int32)
            cu_seqlens[: len(bounds)] = bounds
            sample["cu_seqlens"] = torch.from_numpy(cu_seqlens)
            sample["max_seqlen"] = torch.tensor(int(np.diff(bounds).max()), dtype=torch.int32)
        return sample


def open_sft_store(cfg: Any, tokenizer: ChatBakerTokenizer) -> IndexedDataset:
    """The preprocessed conversation set of `data.sft.path`, checked against tokenizer and template."""
    prefix = resolve_path(cfg.root, cfg.sft.path)
    setting = f"data.sft.path={cfg.sft.path!r}"
    meta = check_dataset(prefix, setting, tokenizer, "chatbaker preprocess --format sft")
    if meta is None or meta.get("format") != "sft":
        raise ValueError(
            f"data.sft.path={cfg.sft.path!r}: not written by `chatbaker preprocess --format sft`"
        )
    if meta.get("chat_template") != cfg.sft.template:
        raise ValueError(
            f"data.sft.template={cfg.sft.template!r}: {prefix} was preprocessed with "
            f"template {meta.get('chat_template')!r}; preprocess it again or change the template"
        )
    store = IndexedDataset(prefix)
    if not np.array_equal(store.document_indices, np.arange(0, len(store) + 1, 2)):
        raise ValueError(f"data.sft.path={cfg.sft.path!r}: expected two sequences per conversation")
    return store


def build_sft_datasets(
    cfg: Any, *, tokenizer: ChatBakerTokenizer, seq_length: int, seed: int
) -> tuple[SFTDataset, SFTDataset | None]:
    """(train, valid) SFT datasets; valid is None when data.sft.valid_fraction is 0."""
    if cfg.kind != "sft":
        raise ValueError(f"data.kind={cfg.kind!r}: build_sft_datasets needs 'sft'")
    store = open_sft_store(cfg, tokenizer)
    count = len(store) // 2
    lengths = np.array(
        [fit_whole_turns(store[2 * i + 1].astype(bool), seq_length) for i in range(count)],
        dtype=np.int64,
    )
    usable = np.flatnonzero(lengths > 0)
    if len(usable) == 0:
        raise ValueError(
            f"data.sft.path={cfg.sft.path!r}: no conversation has a first turn "
            f"that fits in seq_length={seq_length}"
        )
    shuffled = np.random.default_rng(seed).permutation(usable)
    fraction = cfg.sft.valid_fraction
    n_valid = min(len(usable) - 1, max(1, round(len(usable) * fraction))) if fraction > 0 else 0
    common = {"seq_length": seq_length, "pad_id": tokenizer.pad_id, "packing": cfg.sft.packing}
    train = SFTDataset(
        store, np.sort(shuffled[n_valid:]), lengths, seed=seed, epochs=cfg.sft.epochs, **common
    )
    if n_valid == 0:
        return train, None
    valid = SFTDataset(store, np.sort(shuffled[:n_valid]), lengths, seed=seed, epochs=1, **common)
    return train, valid
