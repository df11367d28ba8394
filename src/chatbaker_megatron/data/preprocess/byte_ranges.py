"""Cutting inputs into line-aligned byte ranges, so that one big JSONL is not one scale-out task.

The inputs, concatenated in order, are cut at `tasks - 1` points of equal
byte share; a cut inside a file moves forward to the next line start, so
every range holds whole lines, and consecutive ranges in order are the
inputs in order (the merged output stays byte-identical to one process). A
`.json` array or a `.gz` file cannot be entered in the middle: a cut inside
one moves to its nearer end. Cuts that meet collapse, so tiny inputs give
fewer ranges than tasks.
"""

from __future__ import annotations

import bisect
import itertools

BLOCK = 1 << 16
WHOLE_FILE_SUFFIXES = (".json", ".gz")

# One piece of a task's input: (input index, start byte, end byte).
Piece = tuple[int, int, int]


def next_line_start(path: str, offset: int) -> int:
    """The first line start at or after `offset` in `path` (the file's size when there is none)."""
    if offset == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(offset - 1)
        position = offset - 1
        while block := f.read(BLOCK):
            newline = block.find(b"\n")
            if newline >= 0:
                return position + newline + 1
            position += len(block)
        return position


def _cut(paths: list[str], sizes: list[int], starts: list[int], target: int) -> int:
    """The cut for a target byte of the concatenated inputs: a line start, or a file boundary."""
    i = bisect.bisect_right(starts, target) - 1
    within = target - starts[i]
    if within == 0 or within >= sizes[i]:
        return starts[i] + min(within, sizes[i])
    if paths[i].endswith(WHOLE_FILE_SUFFIXES):
        return starts[i] + (0 if within * 2 < sizes[i] else sizes[i])
    return starts[i] + next_line_start(paths[i], within)


def split_byte_ranges(paths: list[str], sizes: list[int], tasks: int) -> list[list[Piece]]:
    """At most `tasks` non-empty runs of pieces covering every input in order, about equal bytes.

    An empty input goes, whole, into the run where its position falls."""
    starts = [0, *itertools.accumulate(sizes)][:-1]
    total = sum(sizes)
    cuts = [0]
    for k in range(1, tasks):
        cut = _cut(paths, sizes, starts, total * k // tasks)
        if cuts[-1] < cut < total:
            cuts.append(cut)
    cuts.append(total)
    runs = []
    for run, (begin, end) in enumerate(itertools.pairwise(cuts)):
        last = run == len(cuts) - 2
        pieces = []
        for i, (start, size) in enumerate(zip(starts, sizes)):
            if size == 0:
                inside = begin <= start < end or (last and start == total)
            else:
                inside = start < end and start + size > begin
            if inside:
                pieces.append((i, max(begin - start, 0), min(end - start, size)))
        runs.append(pieces)
    return runs
