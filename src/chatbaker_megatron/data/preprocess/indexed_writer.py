"""Writing megatron indexed datasets so that a partial output never looks complete.

The files (megatron's layout, written with numpy by datasets/indexed_files,
so that preprocessing never imports torch) go to temporary names; on success the
files are fsynced and renamed into place with the .idx last (megatron needs
both .bin and .idx, so the .idx is the commit marker; atomic_files.publish)
and any older .idx is removed before the new .bin arrives. The
`PREFIX.meta.json` sidecar (datasets/meta.py) records what the data was made
with, so training can refuse data from another tokenizer.

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

from chatbaker_megatron.atomic_files import publish
from chatbaker_megatron.data.datasets.indexed_files import IndexedFileWriter, bin_path, idx_path
from chatbaker_megatron.data.datasets.meta import meta_path
from chatbaker_megatron.data.preprocess.encode_worker import EncodedChunk

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
    """An IndexedFileWriter on temporary files, renamed into place by commit()."""

    def __init__(self, prefix: str, dtype: type[np.number]) -> None:
        self.prefix = prefix
        self.partial = partial_prefix(prefix, socket.gethostname(), os.getpid())
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self.stale_removed = remove_stale_partials(prefix)
        self.builder = IndexedFileWriter(bin_path(self.partial), dtype)
        self.data_bytes = 0  # written to the .bin so far

    @property
    def index_bytes(self) -> int:
        """Size of the .idx for what was added so far (megatron's format, header aside)."""
        return 12 * self.builder.sequences + 8 * (self.builder.documents + 1)

    def add(self, chunk: EncodedChunk) -> None:
        """Append a chunk's documents, each as one megatron document of `seqs_per_doc` sequences."""
        self.builder.add_documents(chunk.tokens, chunk.seq_lengths, chunk.seqs_per_doc)
        self.data_bytes += int(chunk.seq_lengths.sum()) * self.builder.dtype.itemsize

    def add_dataset(self, prefix: str) -> None:
        """Append a whole indexed dataset of the same dtype: its index entries, then its .bin
        copied as it is."""
        self.builder.add_dataset(prefix)
        self.data_bytes += os.path.getsize(bin_path(prefix))

    def commit(self, meta: dict) -> None:
        self.builder.finalize(idx_path(self.partial))
        with open(meta_path(self.partial), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=2)
        if os.path.exists(idx_path(self.prefix)):
            os.remove(idx_path(self.prefix))
        publish(
            (bin_path(self.partial), bin_path(self.prefix)),
            (meta_path(self.partial), meta_path(self.prefix)),
            (idx_path(self.partial), idx_path(self.prefix)),
        )

    def abort(self) -> None:
        """Remove the partial files. Closing may raise (the buffered tail hits a full disk):
        the error that got us here is the one to report, and the files go regardless."""
        with contextlib.suppress(OSError):
            self.builder.data_file.close()
        for path in (
            bin_path(self.partial),
            idx_path(self.partial),
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
