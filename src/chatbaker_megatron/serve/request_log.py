"""The optional request log for the demo operator: one JSON line per exchange.

Each line is written whole with one write call under a lock and flushed, so
concurrent requests never interleave and a crash loses at most the line
being written; earlier lines stay intact.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
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


def one_or_all(values: list[Any]) -> Any:
    """A record's value for one reply, or the list of them for `n` > 1 or several prompts."""
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Exchange:
    """One generation request as the log records it: the route, who asked, what they gave."""

    endpoint: str  # chat | completion
    given: Any  # the messages or the prompt, as the request gave them
    client: str | None = None
    user: str | None = None  # OpenAI's `user`: the end user's id, for abuse monitoring
    log: RequestLog | None = None

    @property
    def param(self) -> str:
        """The request's input field, which its refusals and length errors name."""
        return "messages" if self.endpoint == "chat" else "prompt"

    def write(self, **fields: Any) -> None:
        if self.log is not None:
            who = {"client": self.client, **({"user": self.user} if self.user is not None else {})}
            self.log.write({"endpoint": self.endpoint, **who, "input": self.given, **fields})
