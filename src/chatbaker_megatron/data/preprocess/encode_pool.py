"""Parent side of preprocessing: inputs -> chunks -> encoded chunks, in order, bounded in flight."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

from chatbaker_megatron.data.corpus import BadInputError, LineChunk, iter_line_chunks
from chatbaker_megatron.data.preprocess.encode_worker import EncodedChunk, RecordChunk, init_worker

CHUNK_BYTES = 1 << 20
RECORDS_PER_CHUNK = 256  # for .json arrays of conversations
# Chunks submitted ahead of the one being written, per worker: enough to keep
# every worker busy, few enough that memory stays flat.
IN_FLIGHT_PER_WORKER = 2


def input_chunks(
    inputs: list[str], fmt: str, ranges: list[tuple[int, int] | None] | None = None
) -> Iterator[tuple[LineChunk | RecordChunk, int]]:
    """(chunk, input bytes it covers) over all inputs, in order; `ranges[i]`, when given and not
    None, is the byte range [start, end) of inputs[i] to read (line-aligned: scaleout.py).

    Lines are streamed; an SFT or preference .json file (one JSON array) is loaded whole.
    """
    for path, byte_range in zip(inputs, ranges or [None] * len(inputs)):
        if fmt != "text" and path.endswith(".json"):
            with open(path, "rb") as f:
                try:
                    records = json.load(f)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise BadInputError(
                        f"{path}: not a JSON array of conversations ({err})"
                    ) from None
            if not isinstance(records, list):
                raise BadInputError(
                    f"{path}: expected a JSON array of conversations, got {type(records).__name__}"
                )
            size = os.path.getsize(path)
            for start in range(0, len(records), RECORDS_PER_CHUNK):
                part = records[start : start + RECORDS_PER_CHUNK]
                yield RecordChunk(path, start, part), size * len(part) // len(records)
        else:
            for chunk in iter_line_chunks(path, CHUNK_BYTES, *(byte_range or (0, None))):
                yield chunk, sum(map(len, chunk.lines))


def encode_in_order(
    work: Iterator[tuple[LineChunk | RecordChunk, int]],
    encode: Callable[[LineChunk | RecordChunk], EncodedChunk],
    workers: int,
    tokenizer_dir: str,
    template: str | None,
    encoder: str = "auto",
) -> Iterator[tuple[EncodedChunk, int]]:
    """`encode` every chunk in `workers` processes (here when 0) with the batch encoder
    `encoder` names (tokenizer/fast.py; "" for none: chat formats); results in input order."""
    if workers == 0:
        init_worker(tokenizer_dir, None, template, encoder)
        for chunk, size in work:
            yield encode(chunk), size
        return
    # forkserver, not fork: a fork of this process would inherit whatever
    # threads it runs (torch's, the tokenizers pool, which the library then
    # disables in the child). Workers fork from a clean server process that
    # imported __main__ once, so they start quickly.
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=init_worker,
        initargs=(tokenizer_dir, threads, template, encoder),
    )
    try:
        pending: deque = deque()
        for chunk, size in work:
            pending.append((pool.submit(encode, chunk), size))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                future, done_size = pending.popleft()
                yield future.result(), done_size
        while pending:
            future, done_size = pending.popleft()
            yield future.result(), done_size
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
