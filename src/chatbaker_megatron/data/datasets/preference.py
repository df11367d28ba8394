"""Preference data: preprocessed chosen/rejected pairs -> one training sequence per pair.

`chatbaker preprocess --format preference` stores every pair as one megatron
document of four sequences: chosen ids, chosen reply flags, rejected ids,
rejected reply flags (data/preprocess/preference_tokenize.py). A sample puts
both sides of one pair in one packed sequence of S = seq_length tokens,
[chosen | rejected | padding], each its own attention segment (cu_seqlens),
so a pair can never be split across micro-batches or data-parallel ranks and
the schedules, pipeline shapes and sequence parallelism are the SFT path's.

A sample:
- tokens, labels, position_ids, cu_seqlens, max_seqlen: as an SFT packed sample;
- loss_mask [S] float32: 1 where labels[i] is a reply token of either side;
- chosen_mask [S] float32: the part of loss_mask that belongs to the chosen side;
- pair_index: 0-d int64, the pair's index in the store (its reference log-probs).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from chatbaker_megatron.config.data import resolve_path
from chatbaker_megatron.data.datasets.integrity import check_dataset
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer

log = logging.getLogger(__name__)

SEQS_PER_PAIR = 4  # chosen ids, chosen flags, rejected ids, rejected flags
WRITER = "chatbaker preprocess --format preference"


class PreferenceDataset(torch.utils.data.Dataset):
    """`epochs` passes over a set of pairs (store indices), reshuffled every pass."""

    def __init__(
        self,
        store: IndexedDataset,
        pairs: np.ndarray,
        *,
        seq_length: int,
        pad_id: int,
        seed: int,
        epochs: int,
    ) -> None:
        self.store, self.pairs = store, pairs
        self.seq_length, self.pad_id, self.seed, self.epochs = seq_length, pad_id, seed, epochs
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.pairs) * self.epochs

    def _pair_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(len(self.pairs)))
        return self._order[1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        epoch, position = divmod(index, len(self.pairs))
        return self.sample(int(self.pairs[self._pair_order(epoch)[position]]))

    def sample(self, pair: int) -> dict[str, torch.Tensor]:
        """The training sequence of pair `pair` (a store index): chosen, then rejected."""
        size = self.seq_length
        tokens = np.full(size, self.pad_id, dtype=np.int64)
        labels = np.full(size, self.pad_id, dtype=np.int64)
        loss_mask = np.zeros(size, dtype=np.float32)
        chosen_mask = np.zeros(size, dtype=np.float32)
        position_ids = np.zeros(size, dtype=np.int64)
        bounds = [0]
        for side in (0, 1):
            ids = self.store[SEQS_PER_PAIR * pair + 2 * side]
            flags = self.store[SEQS_PER_PAIR * pair + 2 * side + 1]
            start, length = bounds[-1], len(ids)
            tokens[start : start + length] = ids
            labels[start : start + length - 1] = ids[1:]
            loss_mask[start : start + length - 1] = flags[1:]
            position_ids[start : start + length] = np.arange(length)
            bounds.append(start + length)
        chosen_mask[: bounds[1]] = loss_mask[: bounds[1]]
        if bounds[-1] < size:
            position_ids[bounds[-1] :] = np.arange(size - bounds[-1])
            bounds.append(size)
        cu_seqlens = np.full(size + 1, size, dtype=np.int32)
        cu_seqlens[: len(bounds)] = bounds
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "chosen_mask": torch.from_numpy(chosen_mask),
            "position_ids": torch.from_numpy(position_ids),
            "cu_seqlens": torch.from_numpy(cu_seqlens),
            "max_seqlen": torch.tensor(int(np.diff(bounds).max()), dtype=torch.int32),
            "pair_index": torch.tensor(pair, dtype=torch.int64),
        }


def open_preference_store(cfg: Any, tokenizer: ChatBakerTokenizer) -> IndexedDataset:
    """The preprocessed pairs of `data.preference.path`, checked against tokenizer and template."""
    section = cfg.preference
    prefix = resolve_path(cfg.root, section.path)
    setting = f"data.preference.path={section.path!r}"
    meta = check_dataset(prefix, setting, tokenizer, WRITER)
    if meta is None or meta.get("format") != "preference":
        raise ValueError(f"{setting}: not written by `{WRITER}`")
    if meta.get("chat_template") != section.template:
        raise ValueError(
            f"data.preference.template={section.template!r}: {prefix} was preprocessed with "
            f"template {meta.get('chat_template')!r}; preprocess it again or change the template"
        )
    store = IndexedDataset(prefix)
    expected = np.arange(0, len(store) + 1, SEQS_PER_PAIR)
    if not np.array_equal(store.document_indices, expected):
        raise ValueError(f"{setting}: expected four sequences per pair (ids and flags per side)")
    return store


def pair_lengths(store: IndexedDataset) -> np.ndarray:
    """Tokens of every pair's training sequence (chosen + rejected)."""
    lengths = store.sequence_lengths.astype(np.int64).reshape(-1, SEQS_PER_PAIR)
    return lengths[:, 0] + lengths[:, 2]


def build_preference_datasets(
    cfg: Any, *, tokenizer: ChatBakerTokenizer, seq_length: int, seed: int
) -> tuple[PreferenceDataset, PreferenceDataset | None]:
    """(train, valid) pair datasets; valid (the held-out pairs) is None when valid_fraction is 0.

    Pairs longer than seq_length (preprocessed for a longer one) are left out
    and counted in the log; none fitting is an error.
    """
    if cfg.kind != "preference":
        raise ValueError(f"data.kind={cfg.kind!r}: build_preference_datasets needs 'preference'")
    store = open_preference_store(cfg, tokenizer)
    lengths = pair_lengths(store)
    usable = np.flatnonzero(lengths <= seq_length)
    if len(usable) == 0:
        raise ValueError(
            f"data.preference.path={cfg.preference.path!r}: no pair fits in "
            f"train.seq_length={seq_length} (the shortest needs {int(lengths.min())} tokens "
            "for chosen + rejected)"
        )
    if len(usable) < len(lengths):
        log.warning(
            "data.preference.path=%r: %d of %d pairs are longer than train.seq_length=%d "
            "and are left out",
            cfg.preference.path,
            len(lengths) - len(usable),
            len(lengths),
            seq_length,
        )
    shuffled = np.random.default_rng(seed).permutation(usable)
    fraction = cfg.preference.valid_fraction
    n_valid = min(len(usable) - 1, max(1, round(len(usable) * fraction))) if fraction > 0 else 0
    common = {"seq_length": seq_length, "pad_id": tokenizer.pad_id, "seed": seed}
    train = PreferenceDataset(
        store, np.sort(shuffled[n_valid:]), epochs=cfg.preference.epochs, **common
    )
    if n_valid == 0:
        return train, None
    return train, PreferenceDataset(store, np.sort(shuffled[:n_valid]), epochs=1, **common)
