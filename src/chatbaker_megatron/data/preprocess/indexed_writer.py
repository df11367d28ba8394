"""Writing megatron indexed datasets so that a partial output never looks complete.

megatron's IndexedDatasetBuilder writes to temporary names; on success the
files are renamed into place with the .idx last (megatron needs both .bin
and .idx, so the .idx is the commit marker) and any older .idx is removed
before the new .bin arrives. The `PREFIX.meta.json` sidecar (datasets/meta.py)
records what the data was made with, so training can refuse data from
another tokenizer.

The temporary names carry the writer's host and pid
(`PREFIX.partial-<host>-<pid>.*`): a failure or a stop signal removes them
(`abort`, even when closing the half-written file fails on a full disk), and
a kill -9 leaves them for the next writer of the same prefix on that host,
which removes those whose process is gone (a live writer's, or another
host's on a shared filesystem, are never touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
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


PARTIAL_SUFFIXES = (".bin", ".idx", ".meta.json")


def partial_prefix(prefix: str, host: str, pid: int) -> str:
    return f"{prefix}.partial-{host}-{pid}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(prefix: str) -> list[str]:
    """Remove `prefix`'s partial files left by writers on this host that no longer run; returns them."""
    directory = os.path.dirname(os.path.abspath(prefix))
    pattern = re.compile(
        rf"{re.escape(os.path.basename(prefix))}\.partial-(?P<host>.+)-(?P<pid>\d+)"
        rf"(?:{'|'.join(map(re.escape, PARTIAL_SUFFIXES))})"
    )
    host = socket.gethostname()
    removed = []
    for name in sorted(os.listdir(directory)):
        match = pattern.fullmatch(name)
        if match and match["host"] == host and not _process_exists(int(match["pid"])):
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):  # a concurrent cleaner was first
                os.remove(path)
                removed.append(path)
    return removed


class AtomicIndexedWriter:
    """An IndexedDatasetBuilder on temporary files, renamed into place by commit()."""

    def __init__(self, prefix: str, dtype: type[np.number]) -> None:
        self.prefix = prefix
        self.partial = partial_prefix(prefix, socket.gethostname(), os.getpid())
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self.stale_removed = remove_stale_partials(prefix)
        self.builder = IndexedDatasetBuilder(get_bin_path(self.partial), dtype=dtype)
        self.data_bytes = 0  # written to the .bin so far

    @property
    def index_bytes(self) -> int:
        """Size of the .idx for what was added so far (megatron's format, header aside)."""
        return 12 * len(self.builder.sequence_lengths) + 8 * len(self.builder.document_indices)

    def add(self, chunk: EncodedChunk) -> None:
        """Append a chunk's documents, each as one megatron document of `seqs_per_doc` sequences."""
        bounds = np.concatenate([[0], np.cumsum(chunk.seq_lengths)]).tolist()
        lengths = chunk.seq_lengths.tolist()
        step = chunk.seqs_per_doc
        for first in range(0, len(lengths), step):
            begin, end = bounds[first], bounds[first + step]
            self.builder.add_document(chunk.tokens[begin:end], lengths[first : first + step])
        self.data_bytes += int(chunk.seq_lengths.sum()) * np.dtype(self.builder.dtype).itemsize

    def add_dataset(self, prefix: str) -> None:
        """Append a whole indexed dataset of the same dtype (megatron's add_index: its index
        entries, then its .bin copied as it is)."""
        self.builder.add_index(prefix)
        self.data_bytes += os.path.getsize(get_bin_path(prefix))

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
        """Remove the partial files. Closing may raise (the buffered tail hits a full disk):
        the error that got us here is the one to report, and the files go regardless."""
        with contextlib.suppress(OSError):
            self.builder.data_file.close()
        for path in (
            get_bin_path(self.partial),
            get_idx_path(self.partial),
            meta_path(self.partial),
        ):
            with contextlib.suppress(FileNotFoundError):
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
