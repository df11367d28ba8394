"""Fitting conversations into fixed-length sequences: cut to whole turns, then pack.

A conversation longer than the sequence is cut after the last assistant
reply (its eos) that fits, so only whole turns are kept; preprocessing uses
the same cut for its report. Packing is best-fit decreasing: longest items
first, each into the open bin with the least room that still fits it (else a
new bin). Open bins are indexed by their remaining room, so an item costs a
binary search over at most `capacity` distinct values: a few hundred
thousand conversations pack in about a second. The result depends only on
the lengths, so every rank computes the same bins. numpy only: the
preprocessing workers import this module.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Packing:
    """Bins of item indices: bin i holds items[bin_offsets[i]:bin_offsets[i + 1]]."""

    items: np.ndarray
    bin_offsets: np.ndarray
    capacity: int

    def __len__(self) -> int:
        return len(self.bin_offsets) - 1

    def bin(self, index: int) -> np.ndarray:
        return self.items[self.bin_offsets[index] : self.bin_offsets[index + 1]]


def pack_best_fit_decreasing(lengths: np.ndarray, capacity: int) -> Packing:
    """Pack items of the given lengths (each 1..capacity) into bins of `capacity` tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(
            f"item lengths must be in 1..{capacity}, got {lengths.min()}..{lengths.max()}"
        )
    bins: list[list[int]] = []
    rooms: list[int] = []  # sorted distinct room values that have an open bin
    open_bins: dict[int, list[int]] = {}  # room -> bins with that much room
    for item in np.argsort(-lengths, kind="stable").tolist():
        length = int(lengths[item])
        at = bisect_left(rooms, length)
        if at < len(rooms):
            room = rooms[at]
            target = open_bins[room].pop()
            if not open_bins[room]:
                del open_bins[room]
                rooms.pop(at)
        else:
            room, target = capacity, len(bins)
            bins.append([])
        bins[target].append(item)
        left = room - length
        if left:
            if left not in open_bins:
                open_bins[left] = []
                insort(rooms, left)
            open_bins[left].append(target)
    sizes = [len(b) for b in bins]
    items = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=sum(sizes))
    return Packing(items, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), capacity)


def one_per_bin(count: int, capacity: int) -> Packing:
    """No packing: every item alone in its bin, padded to capacity (FastChat's pad-to-max)."""
    return Packing(np.arange(count, dtype=np.int64), np.arange(count + 1, dtype=np.int64), capacity)


def packing_efficiency(lengths: np.ndarray, packing: Packing) -> float:
    """Non-pad tokens / all tokens over the packed sequences."""
    if not len(packing):
        return 0.0
    return float(np.asarray(lengths)[packing.items].sum()) / (len(packing) * packing.capacity)


def turn_ends(targets: np.ndarray) -> np.ndarray:
    """Token index just past each assistant reply: the cut points that keep whole turns."""
    after = np.append(targets[1:], False)
    return np.flatnonzero(targets & ~after) + 1


def fit_whole_turns(targets: np.ndarray, max_length: int) -> int:
    """Length of the longest prefix of whole turns that fits in max_length tokens (0: none fits)."""
    ends = turn_ends(targets)
    fitting = ends[ends <= max_length]
    return int(fitting[-1]) if len(fitting) else 0
