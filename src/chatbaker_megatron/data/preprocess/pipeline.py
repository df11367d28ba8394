"""Preprocessing: jsonl (or SFT conversations) -> megatron .bin/.idx indexed dataset.

The main process streams the inputs in chunks of whole lines (about 1 MiB),
worker processes decode and batch-encode each chunk (encode_pool,
encode_worker), and the main process writes the results in input order
in megatron's .bin/.idx layout (indexed_writer, with numpy alone: nothing
on this path imports torch or megatron). At most two
chunks per worker are in flight, so memory does not grow with the corpus:
the token data goes straight to disk and only megatron's per-document index
(a few dozen bytes per document) stays in memory until the .idx is written.

--format text: one document per line (`--json-key`), eos appended.
--format sft: ShareGPT conversations rendered with a chat template; every
document is two sequences, the token ids and the 0/1 target flags
(read by datasets/sft.py).

Every exit path removes the partial output: errors and Ctrl-C through the
writer's abort, SIGTERM/SIGHUP by turning them into an exception
(chatbaker_megatron.stop_signals); a full, over-quota or read-only disk is
reported as one line with the bytes the output needs (disk_space).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from tqdm import tqdm

from chatbaker_megatron.data.corpus import BadInputError, BadRecord, ErrorTally
from chatbaker_megatron.data.datasets.indexed_files import token_dtype
from chatbaker_megatron.data.datasets.packing import pack_best_fit_decreasing, packing_efficiency
from chatbaker_megatron.data.preprocess.disk_space import (
    OutputDiskError,
    describe_disk_error,
    estimate_output_bytes,
)
from chatbaker_megatron.data.preprocess.encode_pool import encode_in_order, input_chunks
from chatbaker_megatron.data.preprocess.encode_worker import (
    EncodedChunk,
    encode_sft_chunk,
    encode_text_chunk,
)
from chatbaker_megatron.data.preprocess.indexed_writer import AtomicIndexedWriter
from chatbaker_megatron.data.preprocess.preference_tokenize import (
    SEQS_PER_PAIR,
    encode_preference_chunk,
)
from chatbaker_megatron.data.templates import load_template
from chatbaker_megatron.data.tokenizer.fast import batch_encoder
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.disk_errors import disk_errno
from chatbaker_megatron.stop_signals import stop_signals_raise

FORMATS = ("text", "sft", "preference")
SEQS_PER_DOC = {"text": 1, "sft": 2, "preference": SEQS_PER_PAIR}
DOCUMENT_NAMES = {"text": "documents", "sft": "conversations", "preference": "pairs"}


@dataclass
class PreprocessStats:
    output_prefix: str
    fmt: str
    files: int
    workers: int
    errors: ErrorTally
    docs: int = 0
    tokens: int = 0
    chars: int = 0
    seconds: float = 0.0
    target_tokens: int = 0
    seq_length: int = 0
    encoder_note: str = ""  # --format text: which batch encoder ran (tokenizer/fast.py)
    fitted_lengths: list[np.ndarray] = field(default_factory=list)
    full_lengths: list[np.ndarray] = field(default_factory=list)

    def add(self, chunk: EncodedChunk) -> None:
        # SFT and preference documents alternate ids and flags: count the ids only.
        step = 2 if chunk.seqs_per_doc > 1 else 1
        self.tokens += int(chunk.seq_lengths[::step].sum())
        self.docs += chunk.docs
        self.chars += chunk.chars
        self.target_tokens += chunk.target_tokens
        if chunk.fitted_lengths is not None:
            self.fitted_lengths.append(chunk.fitted_lengths)
            self.full_lengths.append(chunk.seq_lengths[::2])

    def summary(self) -> str:
        rate = self.seconds or float("inf")
        lines = [
            f"preprocess: {self.docs:,} {DOCUMENT_NAMES[self.fmt]}, "
            f"{self.tokens:,} tokens, {self.chars:,} characters from {self.files} file(s) in "
            f"{self.seconds:.1f}s with {self.workers} worker(s): {self.docs / rate:,.0f} docs/s, "
            f"{self.tokens / rate:,.0f} tokens/s -> {self.output_prefix}.bin/.idx",
            self.errors.summary(),
        ]
        if self.encoder_note:
            lines.append(self.encoder_note)
        if self.fmt == "sft":
            lines.append(self._sft_summary())
        if self.fmt == "preference":
            share = self.target_tokens / self.tokens if self.tokens else 0.0
            lines.append(
                f"preference: {share:.1%} of tokens are reply targets; every pair fits "
                f"seq length {self.seq_length} (chosen + rejected in one sequence)"
            )
        return "\n".join(lines)

    def _sft_summary(self) -> str:
        fitted = np.concatenate(self.fitted_lengths) if self.fitted_lengths else np.zeros(0, int)
        full = np.concatenate(self.full_lengths) if self.full_lengths else np.zeros(0, int)
        kept = fitted[fitted > 0]
        packed = pack_best_fit_decreasing(kept, self.seq_length)
        padded = kept.sum() / (len(kept) * self.seq_length) if len(kept) else 0.0
        share = self.target_tokens / self.tokens if self.tokens else 0.0
        return (
            f"sft: {share:.1%} of tokens are assistant targets; at seq length {self.seq_length}: "
            f"{int(((fitted > 0) & (fitted < full)).sum())} truncated to whole turns, "
            f"{int((fitted == 0).sum())} dropped (first turn too long); packing efficiency "
            f"{packing_efficiency(kept, packed):.1%} in {len(packed):,} sequences "
            f"(pad-to-max: {padded:.1%} in {len(kept):,})"
        )


def _disk_error(
    err: OSError,
    code: int,
    writer: Any,
    output_prefix: str,
    input_done: int,
    input_total: int,
    dtype: type[np.number],
    fmt: str,
) -> OutputDiskError:
    """The one-line report of a full or read-only output disk; `writer` is None if never opened."""
    needed = estimate_output_bytes(
        written=writer.data_bytes + writer.index_bytes if writer else 0,
        input_done=input_done,
        input_total=input_total,
        itemsize=np.dtype(dtype).itemsize,
        seqs_per_doc=SEQS_PER_DOC[fmt],
    )
    path = f"{writer.partial}.bin" if writer else output_prefix
    progress = input_done / input_total if input_total else 0.0
    return OutputDiskError(
        describe_disk_error(err, code, path=path, needed=needed, progress=progress), code
    )


def check_arguments(inputs: list[str], *, fmt: str, workers: int, seq_length: int) -> None:
    """Fail on impossible arguments and missing inputs before any work starts."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if workers < 0:
        raise ValueError(f"--workers={workers}: expected >= 0")
    if seq_length < 1:
        raise ValueError(f"--seq-length={seq_length}: expected >= 1")
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such input file")


def preprocess(
    inputs: list[str],
    tokenizer_dir: str,
    output_prefix: str,
    *,
    fmt: str = "text",
    json_key: str = "text",
    workers: int = 0,
    chat_template: str = "chatbaker",
    seq_length: int = 2048,
    on_error: str = "fail",
    progress: bool = True,
    progress_label: str = "preprocess",
    allow_empty: bool = False,
    encoder: str = "auto",
    ranges: list[tuple[int, int] | None] | None = None,
) -> PreprocessStats:
    """Write `output_prefix`.bin/.idx/.meta.json from `inputs`; returns the counts for the summary.

    `encoder` (--format text): auto, tiktoken or hf (tokenizer/fast.py); the
    output is the same with each. `ranges[i]`, when given and not None, is the
    line-aligned byte range [start, end) of inputs[i] to read (a scale-out task).

    No usable record is an error unless `allow_empty` (a part of a scale-out
    job: the merge decides whether the whole job is empty)."""
    check_arguments(inputs, fmt=fmt, workers=workers, seq_length=seq_length)
    tokenizer = load_tokenizer(tokenizer_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    if fmt in ("sft", "preference"):
        chat_encode = encode_sft_chunk if fmt == "sft" else encode_preference_chunk
        encode = partial(chat_encode, dtype=np.dtype(dtype).name, seq_length=seq_length)
        load_template(chat_template)  # an unknown template fails before any work
        template = chat_template
    else:
        encode = partial(encode_text_chunk, json_key=json_key, dtype=np.dtype(dtype).name)
        template = None
    # Built here too (a few ms) so that "tiktoken" on a tokenizer it cannot
    # reproduce fails before any work, and the summary says which one ran.
    encoder_note = batch_encoder(tokenizer.backend, encoder).note if fmt == "text" else ""
    stats = PreprocessStats(
        output_prefix,
        fmt,
        len(inputs),
        workers,
        ErrorTally(on_error),
        seq_length=seq_length,
        encoder_note=encoder_note,
    )
    start = time.perf_counter()
    input_total = sum(
        r[1] - r[0] if r else os.path.getsize(p)
        for p, r in zip(inputs, ranges or [None] * len(inputs))
    )
    bar = tqdm(
        total=input_total,
        unit="B",
        unit_scale=True,
        desc=progress_label,
        disable=not progress,
        file=sys.stderr,
    )
    writer = None
    input_done = 0  # input bytes whose tokens are written (a disabled bar counts nothing)
    try:
        with bar, stop_signals_raise(), AtomicIndexedWriter(output_prefix, dtype) as writer:
            for path in writer.stale_removed:
                print(
                    f"preprocess: removed {path}, left by a run that no longer exists",
                    file=sys.stderr,
                )
            for chunk, size in encode_in_order(
                input_chunks(inputs, fmt, ranges),
                encode,
                workers,
                tokenizer_dir,
                template,
                encoder if fmt == "text" else "",
            ):
                for location, kind, detail in chunk.bad:
                    stats.errors.add(location, BadRecord(kind, detail))
                writer.add(chunk)
                stats.add(chunk)
                elapsed = time.perf_counter() - start
                bar.set_postfix_str(
                    f"{stats.docs / elapsed:,.0f} docs/s, {stats.tokens / elapsed:,.0f} tok/s",
                    refresh=False,
                )
                bar.update(size)
                input_done += size
            if stats.docs == 0 and not allow_empty:
                raise BadInputError(f"no usable records in {', '.join(inputs)}")
            stats.seconds = time.perf_counter() - start
            writer.commit(
                {
                    "format": fmt,
                    "inputs": [os.path.abspath(p) for p in inputs],
                    "json_key": json_key if fmt == "text" else None,
                    "chat_template": template,
                    "tokenizer": os.path.abspath(tokenizer_dir),
                    "tokenizer_sha256": tokenizer.sha256,
                    "vocab_size": tokenizer.vocab_size,
                    "documents": stats.docs,
                    "tokens": stats.tokens,
                    "bad_records": stats.errors.total,
                }
            )
    except OSError as err:
        code = disk_errno(err)
        if code is None or isinstance(err, OutputDiskError):
            raise
        raise _disk_error(
            err, code, writer, output_prefix, input_done, input_total, dtype, fmt
        ) from None
    return stats
