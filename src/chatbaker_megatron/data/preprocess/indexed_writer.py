"""Writing megatron indexed datasets so that a partial output never looks complete.

megatron's IndexedDatasetBuilder writes to temporary names; on success the
files are renamed into place with the .idx last (megatron needs both .bin
and .idx, so the .idx is the commit marker) and any older .idx is removed
before the new .bin arrives. The `PREFIX.meta.json` sidecar (datasets/meta.py)
records what the data was made with, so training can refuse data from
another tokenizer.
"""

from __future__ import annotations

import json
import os
from types import TracebackType

import numpy as np
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)

from chatbaker_megatron.data.datasets.meta import meta_path
from chatbaker_megatron.data.preprocess.encode_worker import EncodedChunk


def token_dtype(vocab_size: int) -> type[np.number]:
    """The .bin token dtype megatron picks for a vocabulary: uint16 when it fits, else int32."""
    return DType.optimal_dtype(vocab_size)


class AtomicIndexedWriter:
    """An IndexedDatasetBuilder on temporary files, renamed into place by commit()."""

    def __init__(self, prefix: str, dtype: type[np.number]) -> None:
        self.prefix = prefix
        self.partial = f"{prefix}.partial-{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self.builder = IndexedDatasetBuilder(get_bin_path(self.partial), dtype=dtype)

    def add(self, chunk: EncodedChunk) -> None:
        """Append a chunk's documents, each as one megatron document of `seqs_per_doc` sequences."""
        bounds = np.concatenate([[0], np.cumsum(chunk.seq_lengths)]).tolist()
        lengths = chunk.seq_lengths.tolist()
        step = chunk.seqs_per_doc
        for first in range(0, len(lengths), step):
            begin, end = bounds[first], bounds[first + step]
            self.builder.add_document(chunk.tokens[begin:end], lengths[first : first + step])

    def commit(self, meta: dict) -> None:
        self.builder.finalize(get_idx_path(self.partial))
        with open(meta_path(self.partial), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=2)
        if os.path.exists(get_idx_path(self.prefix)):
            os.remove(get_idx_path(self.prefix))
        os.replace(get_bin_path(self.partial), get_bin_path(self.prefix))
        os.replace(meta_path(self.partial), meta_path(self.prefix))
        os.replace(get_idx_path(self.partial), get_idx_path(self.prefix))

    def abort(self) -> None:
        self.builder.data_file.close()
        for path in (
            get_bin_path(self.partial),
            get_idx_path(self.partial),
            meta_path(self.partial),
        ):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> AtomicIndexedWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
