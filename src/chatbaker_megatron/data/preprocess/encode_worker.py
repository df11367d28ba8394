"""Worker side of `chatbaker preprocess`: one chunk of records in, flat token arrays out.

Runs in worker processes (or in the main process with --workers 0).
Each chunk of text is encoded with one batch call (tiktoken where it is
exact for the tokenizer, else the tokenizers library: tokenizer/fast.py; chat
formats need character offsets and use the tokenizers library) and comes
back as a single numpy array plus lengths, so the main process never handles per-token
Python objects. This module stays free of megatron and torch imports so that
workers start in a fraction of a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from chatbaker_megatron.data.corpus import BadRecord, LineChunk, decode_json_line, text_field
from chatbaker_megatron.data.datasets.packing import fit_whole_turns
from chatbaker_megatron.data.preprocess.conversations import parse_sharegpt
from chatbaker_megatron.data.preprocess.sft_tokenize import tokenize_conversations
from chatbaker_megatron.data.templates import ChatTemplate, load_template
from chatbaker_megatron.data.tokenizer.fast import BatchEncoder, batch_encoder
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer, load_tokenizer


@dataclass(frozen=True)
class RecordChunk:
    """Consecutive records of a JSON array file; `first_index` is the index of records[0]."""

    path: str
    first_index: int
    records: list


@dataclass
class EncodedChunk:
    """Documents of one chunk, each `seqs_per_doc` consecutive sequences in `tokens`."""

    tokens: np.ndarray
    seq_lengths: np.ndarray  # int64, one per sequence
    seqs_per_doc: int
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (location, kind, detail)
    chars: int = 0
    # SFT only: target tokens, and each conversation's length after cutting
    # whole turns to the summary's sequence length (0 when no turn fits).
    target_tokens: int = 0
    fitted_lengths: np.ndarray | None = None

    @property
    def docs(self) -> int:
        return len(self.seq_lengths) // self.seqs_per_doc


class _WorkerState(TypedDict, total=False):
    """What init_worker loads, once per worker process."""

    tokenizer: ChatBakerTokenizer
    encoder: BatchEncoder | None  # None for the chat formats
    template: ChatTemplate | None  # None for --format text


_worker: _WorkerState = {}


def init_worker(
    tokenizer_dir: str, rayon_threads: int | None, template: str | None, encoder: str = "auto"
) -> None:
    """Load the tokenizer, its batch encoder (fast.py) and the chat template once per worker."""
    if rayon_threads:
        # Read by the tokenizers library when it first starts its thread pool;
        # with several worker processes each gets its share of the cores.
        os.environ["RAYON_NUM_THREADS"] = str(rayon_threads)
    tokenizer = load_tokenizer(tokenizer_dir)
    _worker["tokenizer"] = tokenizer
    threads = rayon_threads or os.cpu_count() or 1
    _worker["encoder"] = batch_encoder(tokenizer.backend, encoder, threads) if encoder else None
    _worker["template"] = load_template(template) if template else None


def _flatten(
    sequences: list[list[int]] | list[np.ndarray], dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    for seq, n in zip(sequences, lengths):
        flat[pos : pos + n] = seq
        pos += int(n)
    return flat, lengths


def encode_text_chunk(chunk: LineChunk, json_key: str, dtype: str) -> EncodedChunk:
    """Pretraining documents: the `json_key` text of every line, encoded, with eos appended."""
    tokenizer = _worker["tokenizer"]
    encoder = _worker["encoder"]
    assert encoder is not None, "--format text loads a batch encoder (encode_pool)"
    texts, bad = [], []
    for offset, raw in enumerate(chunk.lines):
        try:
            texts.append(text_field(decode_json_line(raw), json_key))
        except BadRecord as err:
            bad.append((chunk.location(offset), err.kind, err.detail))
    sequences = encoder.encode_batch(texts)
    for ids in sequences:
        ids.append(tokenizer.eos_id)
    tokens, lengths = _flatten(sequences, dtype)
    return EncodedChunk(tokens, lengths, 1, bad, chars=sum(map(len, texts)))


def _records(chunk: LineChunk | RecordChunk) -> Iterator[tuple[str, object]]:
    """(location, record) pairs; a record that failed to decode is its BadRecord."""
    if isinstance(chunk, RecordChunk):
        for offset, record in enumerate(chunk.records):
            yield f"{chunk.path}[{chunk.first_index + offset}]", record
        return
    for offset, raw in enumerate(chunk.lines):
        location = chunk.location(offset)
        try:
            yield location, decode_json_line(raw)
        except BadRecord as err:
            yield location, err


def chat_worker() -> tuple[ChatBakerTokenizer, ChatTemplate]:
    """The tokenizer and chat template init_worker loaded for a chat format."""
    template = _worker["template"]
    assert template is not None, "the chat formats load a chat template (pipeline.py)"
    return _worker["tokenizer"], template


def encode_sft_chunk(chunk: LineChunk | RecordChunk, dtype: str, seq_length: int) -> EncodedChunk:
    """Conversations: per document, the token ids then the target flags (two sequences)."""
    tokenizer, template = chat_worker()
    conversations, positions = [], []
    bad: list[tuple[int, str, str, str]] = []  # (position, location, kind, detail)
    for position, (location, record) in enumerate(_records(chunk)):
        try:
            if isinstance(record, BadRecord):
                raise record
            conversations.append(parse_sharegpt(record))
            positions.append((position, location))
        except BadRecord as err:
            bad.append((position, location, err.kind, err.detail))
    sequences, fitted, targets = [], [], 0
    results = tokenize_conversations(tokenizer, template, conversations)
    for (position, location), result in zip(positions, results):
        if isinstance(result, BadRecord):
            bad.append((position, location, result.kind, result.detail))
            continue
        sequences += [result.ids, result.targets]
        fitted.append(fit_whole_turns(result.targets, seq_length))
        targets += int(result.targets.sum())
    tokens, lengths = _flatten(sequences, dtype)
    chars = sum(len(m.content) for messages in conversations for m in messages)
    return EncodedChunk(
        tokens,
        lengths,
        2,
        [entry[1:] for entry in sorted(bad)],  # in input order: --on-error fail names the first
        chars=chars,
        target_tokens=targets,
        fitted_lengths=np.asarray(fitted, dtype=np.int64),
    )
