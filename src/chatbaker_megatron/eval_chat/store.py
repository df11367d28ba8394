"""Append-only JSONL caches of answers and judgments, in FastChat's llm_judge layout.

    <output>/model_answer/<model>.jsonl            one line per question
    <output>/model_judgment/<judge>_single.jsonl    one line per model, question and turn
    <output>/model_judgment/<judge>_pair.jsonl      one line per pair, question and turn
    <output>/model_judgment/chrf_reference.jsonl    the judge-free metric

Each line is written whole and flushed as soon as its call returns, so a
killed run loses at most the calls in flight; a line cut short by the kill
is dropped when the file is opened again. The last record of a key wins
(a judgment that failed is tried again by the next run and replaced).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class JsonlStore:
    """The records of one JSONL file by key; `put` appends and flushes (thread-safe)."""

    def __init__(self, path: Path, key: Callable[[Record], tuple]) -> None:
        self.path = path
        self._key = key
        self._records: dict[tuple, Record] = {}
        self._lock = threading.Lock()
        self.dropped_partial_line = False
        if path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A line cut short by a kill: drop it so the next append starts a line.
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)
            data = data[:keep]
            self.dropped_partial_line = True
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number}: not a JSON line ({err.msg})") from None
            self._records[self._key(record)] = record

    def get(self, *key: Any) -> Record | None:
        return self._records.get(tuple(key))

    def __iter__(self) -> Iterator[Record]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: Record) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._records[self._key(record)] = record
