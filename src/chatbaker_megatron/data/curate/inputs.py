"""Input files and the readers of the first stage: skip-and-count (or fail on) bad input.

datatrove's JsonlReader and ParquetReader read and shard the files (task r
reads files r, r+N, ...); the subclasses here decide what a bad record is,
reusing the project's record checks (data/corpus.py): invalid JSON, bytes
that are not UTF-8 (tried again in `read.fallback_encodings`, e.g. cp949
for legacy Korean pages), a missing, non-string or empty text field, an
unreadable file, a file without any document. Each is counted as a stat
(`bad_<kind>`) that the report sums, or, with `read.on_bad_input=fail`,
stops the job naming the file, line and what was expected.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers import JsonlReader, ParquetReader

from chatbaker_megatron.data.corpus import BadInputError, BadRecord, decode_json_line, text_field

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSED_SUFFIXES = (".gz",)
# A stat per file read only in part: the report lists their names.
UNREADABLE_FILE_STAT = "unreadable_file:"


@dataclass(frozen=True)
class InputFiles:
    """The input files, relative to `root`, split by format (sorted: the sharding is stable)."""

    root: str
    jsonl: list[str]
    parquet: list[str]

    @property
    def all(self) -> list[str]:
        return sorted(self.jsonl + self.parquet)


def _is_input(path: str) -> bool:
    return path.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES)


def resolve_inputs(pattern: str) -> InputFiles:
    """A file, a folder (searched recursively) or a glob -> the input files."""
    pattern = os.path.abspath(os.path.expanduser(pattern))
    if os.path.isdir(pattern):
        paths = glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
    elif os.path.isfile(pattern):
        paths = [pattern]
    else:
        paths = glob.glob(pattern, recursive=True)
    paths = sorted(p for p in paths if os.path.isfile(p) and _is_input(p))
    if not paths:
        raise FileNotFoundError(
            f"input={pattern}: no {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)} files there"
        )
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    relative = [os.path.relpath(p, root) for p in paths]
    return InputFiles(
        root=root,
        jsonl=[p for p in relative if p.endswith(JSONL_SUFFIXES)],
        parquet=[p for p in relative if p.endswith(PARQUET_SUFFIXES)],
    )


class BadInputPolicy:
    """Counts a bad record as `bad_<kind>`, or raises in `fail` mode."""

    on_bad_input: str
    # The datatrove reader this is mixed into provides it (PipelineStep.stat_update).
    stat_update: Callable[..., None]

    def bad(self, location: str, bad: BadRecord) -> None:
        if self.on_bad_input == "fail":
            raise BadInputError(
                f"{location}: {bad} (read.on_bad_input=skip counts and skips such input)"
            )
        self.stat_update(f"bad_{bad.kind}")

    def unreadable(self, filepath: str, detail: str) -> None:
        """A file read only in part (or not at all): counted, and named in the report."""
        self.bad(filepath, BadRecord("unreadable-file", detail))
        self.stat_update(f"{UNREADABLE_FILE_STAT}{filepath}")

    def tag_source(self, document: Document, filepath: str) -> Document:
        # The record's own `source` (if any) is more specific than its file.
        document.metadata.setdefault("source", filepath)
        return document


class CuratedJsonlReader(BadInputPolicy, JsonlReader):
    name = "🐿 Jsonl (bad lines counted)"

    def __init__(
        self,
        *args,
        on_bad_input: str,
        fallback_encodings: list[str],
        keep_partial_files: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_bad_input = on_bad_input
        self.fallback_encodings = list(fallback_encodings)
        self.keep_partial_files = keep_partial_files

    def _damage(self, filepath: str) -> str | None:
        """Why a compressed file cannot be read to its end (truncated, bad CRC), or None.

        A first pass decompresses it whole, so that nothing of a damaged file is kept.
        """
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                while f.read(1 << 20):
                    pass
        except (OSError, EOFError) as err:
            return f"{type(err).__name__}: {err}"
        return None

    def _decode(self, raw: bytes) -> object:
        try:
            return decode_json_line(raw)
        except BadRecord as bad:
            if bad.kind != "non-utf8":
                raise
            for encoding in self.fallback_encodings:
                try:
                    record = decode_json_line(raw.decode(encoding).encode("utf-8"))
                except (UnicodeDecodeError, BadRecord):
                    continue
                self.stat_update(f"reencoded_{encoding}")
                return record
            raise

    def read_file(self, filepath: str) -> DocumentsPipeline:
        found = 0
        damage = self._damage(filepath) if filepath.endswith(COMPRESSED_SUFFIXES) else None
        if damage is not None:
            kept = "; what precedes it is kept (read.keep_partial_files=true)"
            self.unreadable(
                filepath, damage + (kept if self.keep_partial_files else "; nothing of it is kept")
            )
            if not self.keep_partial_files:
                return
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for number, raw in enumerate(f, start=1):
                    with self.track_time():
                        try:
                            record = self._decode(raw)
                            text_field(record, self.text_key)
                        except BadRecord as bad:
                            self.bad(f"{filepath}:{number}", bad)
                            continue
                        document = self.get_document_from_dict(record, filepath, number - 1)
                    found += 1
                    yield self.tag_source(document, filepath)
        except (OSError, EOFError) as err:
            if damage is None:
                self.unreadable(filepath, f"{type(err).__name__}: {err}")
        if not found and damage is None:
            self.bad(filepath, BadRecord("empty-file", "no document in this file"))


class CuratedParquetReader(BadInputPolicy, ParquetReader):
    name = "📒 Parquet (bad rows counted)"

    def __init__(self, *args, on_bad_input: str, **kwargs) -> None:
        super().__init__(*args, read_metadata=True, **kwargs)
        self.on_bad_input = on_bad_input

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int):
        try:
            text_field(data, self.text_key)
        except BadRecord as bad:
            self.bad(f"{source_file}: row {id_in_file + 1}", bad)
            return None
        return self.tag_source(
            super().get_document_from_dict(data, source_file, id_in_file), source_file
        )

    def read_file(self, filepath: str) -> DocumentsPipeline:
        found = 0
        try:
            for document in super().read_file(filepath):
                found += 1
                yield document
        except OSError as err:
            self.bad(filepath, BadRecord("unreadable-file", f"{type(err).__name__}: {err}"))
        if not found:
            self.bad(filepath, BadRecord("empty-file", "no document in this file"))
