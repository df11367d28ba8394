"""megatron's indexed dataset files (PREFIX.bin + PREFIX.idx), written and read with numpy alone.

Preprocessing writes what megatron's `IndexedDatasetBuilder` writes, byte for
byte (tests/data/datasets/test_indexed_files.py writes both), without
importing torch or megatron-core: that import costs seconds of CPU in every
preprocessing process. The layout (megatron.core.datasets.indexed_dataset,
`_IndexWriter`):

- .bin: the tokens of every sequence, back to back, in the index's dtype;
- .idx: the magic `MMIDIDX\\0\\0`, version 1 (<Q), the dtype code (<B), the
  sequence count (<Q), the document-index count (<Q), then the int32 length of
  every sequence, the int64 byte offset of every sequence in the .bin, and the
  int64 document indices (0, then the sequence count after each document).
  Multimodal indices add one int8 mode per sequence: never written here.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron's DType codes.
DTYPE_CODES: dict[np.dtype, int] = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def token_dtype(vocab_size: int) -> type[np.number]:
    """The .bin token dtype megatron picks for a vocabulary (`DType.optimal_dtype`)."""
    return np.uint16 if vocab_size < 65500 else np.int32


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def dataset_exists(prefix: str) -> bool:
    """Both files are there (megatron's `IndexedDataset.exists`)."""
    return os.path.exists(idx_path(prefix)) and os.path.exists(bin_path(prefix))


@dataclass(frozen=True)
class Index:
    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32, one per sequence
    document_indices: np.ndarray  # int64, 0 then the end sequence of each document


def read_index(path: str) -> Index:
    """The index at `path`; ValueError naming the file when it is not a megatron index."""
    with open(path, "rb") as f:
        head = f.read(len(INDEX_MAGIC) + 25)
        if len(head) < len(INDEX_MAGIC) + 25 or not head.startswith(INDEX_MAGIC):
            raise ValueError(f"{path}: not a megatron index (bad magic bytes or too short)")
        version, code, sequences, documents = struct.unpack("<QBQQ", head[len(INDEX_MAGIC) :])
        if version != INDEX_VERSION or code not in DTYPES:
            raise ValueError(f"{path}: index version {version}, dtype code {code} not supported")
        lengths = np.fromfile(f, dtype=np.int32, count=sequences)
        f.seek(8 * sequences, os.SEEK_CUR)  # the pointers follow from the lengths
        document_indices = np.fromfile(f, dtype=np.int64, count=documents)
    if len(lengths) != sequences or len(document_indices) != documents:
        raise ValueError(f"{path}: shorter than the {sequences} sequences its header states")
    return Index(DTYPES[code], lengths, document_indices)


def write_index(
    path: str, dtype: np.dtype, sequence_lengths: np.ndarray, document_indices: np.ndarray
) -> None:
    """The .idx for sequences of `sequence_lengths` tokens of `dtype`, back to back in the .bin."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(sequence_lengths, dtype=np.int64)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<QB", INDEX_VERSION, DTYPE_CODES[dtype]))
        f.write(struct.pack("<QQ", len(lengths), len(document_indices)))
        f.write(lengths.astype(np.int32).tobytes())
        f.write(pointers.tobytes())
        f.write(np.asarray(document_indices, dtype=np.int64).tobytes())


class IndexedFileWriter:
    """Appends documents to a .bin and writes its .idx at the end (megatron's builder, in numpy)."""

    def __init__(self, bin_file: str, dtype: type[np.number]) -> None:
        self.data_file = open(bin_file, "wb")  # noqa: SIM115 (closed by finalize or the caller)
        self.dtype = np.dtype(dtype)
        self._lengths: list[np.ndarray] = []
        self._ends: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.sequences = 0
        self.documents = 0

    def add_documents(self, tokens: np.ndarray, seq_lengths: np.ndarray, seqs_per_doc: int) -> None:
        """Documents of `seqs_per_doc` consecutive sequences each, their tokens back to back."""
        self.data_file.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        lengths = np.asarray(seq_lengths, dtype=np.int64)
        self._lengths.append(lengths)
        ends = self.sequences + np.arange(seqs_per_doc, len(lengths) + 1, seqs_per_doc)
        self._ends.append(ends.astype(np.int64))
        self.sequences += len(lengths)
        self.documents += len(ends)

    def add_dataset(self, prefix: str) -> None:
        """Append a whole indexed dataset of the same dtype: its index entries, then its .bin."""
        index = read_index(idx_path(prefix))
        if index.dtype != self.dtype:
            raise ValueError(f"{idx_path(prefix)}: tokens of {index.dtype}, expected {self.dtype}")
        self._lengths.append(index.sequence_lengths.astype(np.int64))
        self._ends.append(self.sequences + index.document_indices[1:])
        self.sequences += len(index.sequence_lengths)
        self.documents += len(index.document_indices) - 1
        with open(bin_path(prefix), "rb") as f:
            shutil.copyfileobj(f, self.data_file)

    def finalize(self, index_file: str) -> None:
        self.data_file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        write_index(index_file, self.dtype, lengths, np.concatenate(self._ends))
