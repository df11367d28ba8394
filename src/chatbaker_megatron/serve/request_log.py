"""The optional request log for the demo operator: one JSON line per exchange.

Each line is written whole with one write call under a lock and flushed, so
concurrent requests never interleave and a crash loses at most the line
being written; earlier lines stay intact.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class RequestLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
