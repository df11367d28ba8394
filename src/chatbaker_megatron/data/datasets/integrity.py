"""A megatron indexed dataset's .bin checked against its .idx before any training step.

megatron reads both files lazily: a .bin shorter than its index trains until
a sample reaches the missing bytes and then fails with numpy's "buffer is
smaller than requested size", naming no file; a truncated .idx fails the
same way once the dataset is built. `check_indexed_dataset` parses the
index header (megatron's `_IndexWriter` format: magic, version 1, dtype
code, sequence and document counts, then int32 lengths, int64 byte
pointers, int64 document indices and, for multimodal data, int8 modes) and
compares both file sizes with what it says. Then it reads the index arrays,
a few million entries at a time (at a trillion tokens they are gigabytes,
read once per rank, mostly from the page cache the node's ranks share): a
file of the right size can still hold damaged entries, which megatron would
meet mid-run as "offset must be non-negative", naming no file. Every length
must be >= 0, every byte pointer the previous one plus the previous length
(so they rise and sum to the .bin's size), and the document index must start
at 0, never decrease and stay within the sequences. The error names the
file and the first bad entry.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import numpy as np
from megatron.core.datasets.indexed_dataset import (
    _INDEX_HEADER,
    DType,
    IndexedDataset,
    get_bin_path,
    get_idx_path,
)

from chatbaker_megatron.data.datasets.meta import check_tokenizer
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer

# magic (9) + version (8) + dtype code (1) + sequence count (8) + document count (8)
HEADER_BYTES = len(_INDEX_HEADER) + 8 + 1 + 8 + 8
INDEX_VERSION = 1
# Index entries checked per read (about 100 MB of lengths and pointers).
CHUNK = 1 << 23


class DataIntegrityError(ValueError):
    """A dataset's files disagree with each other; the message names the file and both sizes."""


def _read_at(stream: BinaryIO, offset: int, fmt: str) -> int:
    stream.seek(offset)
    return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]


def _array(idx: str, dtype: type, offset: int, start: int, stop: int) -> np.ndarray:
    """Entries [start, stop) of the index array of `dtype` that begins at byte `offset`."""
    itemsize = np.dtype(dtype).itemsize
    return np.fromfile(idx, dtype=dtype, count=stop - start, offset=offset + start * itemsize)


def _first_bad(mask: np.ndarray) -> int | None:
    bad = np.flatnonzero(mask)
    return int(bad[0]) if bad.size else None


def index_entry_problem(idx: str, sequences: int, documents: int, itemsize: int) -> str | None:
    """The first damaged entry of an index whose size and header are right, or None."""
    lengths_at = HEADER_BYTES
    pointers_at = lengths_at + 4 * sequences
    documents_at = pointers_at + 8 * sequences
    expected = 0  # the pointer of the next sequence
    for start in range(0, sequences, CHUNK):
        stop = min(start + CHUNK, sequences)
        lengths = _array(idx, np.int32, lengths_at, start, stop).astype(np.int64)
        pointers = _array(idx, np.int64, pointers_at, start, stop)
        bad = _first_bad(lengths < 0)
        if bad is not None:
            return f"sequence {start + bad} has length {lengths[bad]}"
        wanted = expected + np.concatenate(([0], np.cumsum(lengths[:-1] * itemsize)))
        bad = _first_bad(pointers != wanted)
        if bad is not None:
            return (
                f"sequence {start + bad} starts at byte {pointers[bad]:,}, expected "
                f"{wanted[bad]:,} (the previous pointer plus the previous length)"
            )
        expected = int(pointers[-1] + lengths[-1] * itemsize)
    previous = 0
    for start in range(0, documents, CHUNK):
        stop = min(start + CHUNK, documents)
        bounds = _array(idx, np.int64, documents_at, start, stop)
        if start == 0 and bounds[0] != 0:
            return f"document 0 starts at sequence {bounds[0]}, expected 0"
        steps = np.diff(np.concatenate(([previous], bounds)))
        bad = _first_bad((steps < 0) | (bounds > sequences))
        if bad is not None:
            return (
                f"document boundary {start + bad} is sequence {bounds[bad]}, outside "
                f"{previous if bad == 0 else bounds[bad - 1]}..{sequences}"
            )
        previous = int(bounds[-1])
    return None


def check_indexed_dataset(prefix: str, setting: str, *, vocab_size: int | None = None) -> None:
    """Raise DataIntegrityError unless `prefix`.idx parses and `prefix`.bin has the size it states.

    `setting` names the config entry the prefix came from (the error starts
    with it); `vocab_size`, when given, must fit the token dtype.
    """
    idx, bin_ = get_idx_path(prefix), get_bin_path(prefix)
    idx_size, bin_size = os.path.getsize(idx), os.path.getsize(bin_)

    def fail(detail: str) -> DataIntegrityError:
        return DataIntegrityError(
            f"{setting}: {detail}; the dataset is damaged or half-copied: "
            "copy or preprocess it again"
        )

    if idx_size < HEADER_BYTES:
        raise fail(
            f"{idx} is {idx_size:,} bytes, shorter than the {HEADER_BYTES}-byte index header"
        )
    with open(idx, "rb") as stream:
        if stream.read(len(_INDEX_HEADER)) != _INDEX_HEADER:
            raise fail(f"{idx} is not a megatron index (bad magic bytes)")
        version = _read_at(stream, len(_INDEX_HEADER), "<Q")
        if version != INDEX_VERSION:
            raise fail(f"{idx} has index version {version}, expected {INDEX_VERSION}")
        code = _read_at(stream, len(_INDEX_HEADER) + 8, "<B")
        if code not in {d.value for d in DType}:
            raise fail(
                f"{idx} has dtype code {code}, not one of megatron's {[d.value for d in DType]}"
            )
        sequences = _read_at(stream, len(_INDEX_HEADER) + 9, "<Q")
        documents = _read_at(stream, len(_INDEX_HEADER) + 17, "<Q")
        arrays = HEADER_BYTES + 4 * sequences + 8 * sequences + 8 * documents
        # Multimodal indices append one int8 mode per sequence.
        if idx_size not in (arrays, arrays + sequences):
            raise fail(
                f"{idx} is {idx_size:,} bytes, expected {arrays:,} for the {sequences:,} "
                f"sequences and {documents:,} document boundaries its header states"
            )
        dtype = DType.dtype_from_code(code)
        itemsize = DType.size(code)
        last_doc = (
            _read_at(stream, HEADER_BYTES + 12 * sequences + 8 * (documents - 1), "<q")
            if documents
            else 0
        )
        if last_doc != sequences:
            raise fail(
                f"{idx} ends its document index at sequence {last_doc}, expected {sequences}"
            )
        if sequences:
            # The writer's pointers are the running sum of length * itemsize, so the
            # last pointer plus the last length is the sum of all lengths in bytes.
            last_length = _read_at(stream, HEADER_BYTES + 4 * (sequences - 1), "<i")
            last_pointer = _read_at(
                stream, HEADER_BYTES + 4 * sequences + 8 * (sequences - 1), "<q"
            )
            expected_bin = last_pointer + last_length * itemsize
        else:
            expected_bin = 0
    problem = index_entry_problem(idx, sequences, documents, itemsize)
    if problem is not None:
        raise fail(f"{idx} is damaged at its first bad entry: {problem}")
    if bin_size != expected_bin:
        raise fail(
            f"{bin_} is {bin_size:,} bytes, but {idx} describes {expected_bin:,} bytes "
            f"({expected_bin // itemsize:,} tokens of {np.dtype(dtype).name})"
        )
    if vocab_size is not None and np.issubdtype(dtype, np.integer):
        largest = np.iinfo(dtype).max
        if vocab_size - 1 > largest:
            raise fail(
                f"{bin_} stores {np.dtype(dtype).name} tokens (at most {largest}), "
                f"but the tokenizer has {vocab_size:,} ids"
            )
    elif vocab_size is not None:
        raise fail(f"{bin_} stores {np.dtype(dtype).name} values, expected integer token ids")


def check_dataset(
    prefix: str, setting: str, tokenizer: ChatBakerTokenizer, writer: str
) -> dict | None:
    """A dataset a config names: present (else `writer`, the command that makes it, is named),
    whole, and preprocessed with `tokenizer`; its sidecar metadata, if it has one."""
    if not IndexedDataset.exists(prefix):
        raise FileNotFoundError(f"{setting}: no {prefix}.bin/.idx (write it with `{writer}`)")
    check_indexed_dataset(prefix, setting, vocab_size=tokenizer.vocab_size)
    return check_tokenizer(prefix, tokenizer, setting)
