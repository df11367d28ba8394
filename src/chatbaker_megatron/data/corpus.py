"""Reading raw text inputs (.jsonl and .txt) and reporting bad records by file:line.

Every reader here works on bytes and decodes one record at a time, so a
non-UTF-8 line is reported where it is instead of failing the whole file.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

ON_ERROR_CHOICES = ("fail", "skip")
_SURROGATE = re.compile("[\ud800-\udfff]")
# How many bad records a summary quotes in full (the rest are counted).
EXAMPLES_SHOWN = 5


class BadRecord(ValueError):
    """One input record that cannot be used; `kind` is a short category for counting."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class BadInputError(ValueError):
    """Raised in `fail` mode: names the file, line and what was wrong."""


def lone_surrogate(text: str) -> str | None:
    """Where `text` holds a lone surrogate (JSON's \\ud800 escapes decode to one; it is not
    Unicode text and no tokenizer takes it), else None."""
    found = None if text.isascii() else _SURROGATE.search(text)
    if found is None:
        return None
    return f"lone surrogate U+{ord(found.group()):04X} at character {found.start()}"


def decode_json_line(raw: bytes) -> object:
    """One jsonl line as a Python object; BadRecord for non-UTF-8 or invalid JSON."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord(
            "non-utf8", f"invalid UTF-8 byte 0x{raw[err.start]:02x} at column {err.start + 1}"
        ) from None
    if not line.strip():
        raise BadRecord("invalid-json", "blank line")
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise BadRecord("invalid-json", err.msg + f" at column {err.colno}") from None


def text_field(record: object, key: str) -> str:
    """The non-empty string at `record[key]`; BadRecord otherwise."""
    if not isinstance(record, dict):
        raise BadRecord("not-an-object", f"expected a JSON object, got {type(record).__name__}")
    if key not in record:
        keys = ", ".join(sorted(record)[:8]) or "none"
        raise BadRecord("missing-key", f"no key {key!r} (keys: {keys})")
    value = record[key]
    if not isinstance(value, str):
        raise BadRecord("not-a-string", f"{key!r} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise BadRecord("empty", f"{key!r} is empty")
    surrogate = lone_surrogate(value)
    if surrogate:
        raise BadRecord("invalid-unicode", f"{key!r} has a {surrogate}")
    return value


@dataclass
class ErrorTally:
    """Counts bad records by kind, keeps the first few, or raises in `fail` mode."""

    on_error: str = "fail"
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error={self.on_error!r}: expected one of {ON_ERROR_CHOICES}")

    def add(self, location: str, bad: BadRecord) -> None:
        message = f"{location}: {bad}"
        if self.on_error == "fail":
            raise BadInputError(message + " (use --on-error skip to skip bad records)")
        self.counts[bad.kind] += 1
        if len(self.examples) < EXAMPLES_SHOWN:
            self.examples.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """'0 bad records' or the counts by kind followed by the first examples."""
        if not self.total:
            return "0 bad records"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
        lines = [f"skipped {self.total} bad records ({kinds}); first ones:"]
        lines += [f"  {example}" for example in self.examples]
        return "\n".join(lines)


@dataclass(frozen=True)
class Document:
    text: str
    path: str


def iter_documents(paths: list[str], json_key: str, tally: ErrorTally) -> Iterator[Document]:
    """Documents of .jsonl files (`json_key` of every line) and .txt files (every non-empty line)."""
    for path in paths:
        jsonl = not path.endswith(".txt")
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    if jsonl:
                        text = text_field(decode_json_line(raw), json_key)
                    else:
                        text = raw.decode("utf-8").rstrip("\r\n")
                        if not text.strip():
                            continue
                except UnicodeDecodeError as err:
                    tally.add(f"{path}:{number}", BadRecord("non-utf8", str(err)))
                    continue
                except BadRecord as bad:
                    tally.add(f"{path}:{number}", bad)
                    continue
                yield Document(text, path)


@dataclass(frozen=True)
class LineChunk:
    """Consecutive raw lines of one file; `first_line` is the 1-based number of lines[0], 0 when
    unknown (a byte range that starts inside the file), `first_byte` its offset in the file."""

    path: str
    first_line: int
    lines: list[bytes]
    first_byte: int = 0

    def location(self, index: int) -> str:
        """Where lines[index] is: FILE:LINE, or FILE:byte OFFSET when line numbers are unknown."""
        if self.first_line:
            return f"{self.path}:{self.first_line + index}"
        return f"{self.path}:byte {self.first_byte + sum(map(len, self.lines[:index]))}"


def iter_line_chunks(
    path: str, chunk_bytes: int, start: int = 0, end: int | None = None
) -> Iterator[LineChunk]:
    """Split a file, or its bytes [start, end) (whole lines: both at line starts), into chunks of
    whole lines of about `chunk_bytes` each (streaming)."""
    with open(path, "rb") as f:
        f.seek(start)
        lines: list[bytes] = []
        size, first, first_byte, position = 0, int(start == 0), start, start
        for number, raw in enumerate(f, start=1):
            if end is not None and position >= end:
                break
            lines.append(raw)
            size += len(raw)
            position += len(raw)
            if size >= chunk_bytes:
                yield LineChunk(path, first, lines, first_byte)
                lines, size, first_byte = [], 0, position
                first = number + 1 if first else 0
        if lines:
            yield LineChunk(path, first, lines, first_byte)
